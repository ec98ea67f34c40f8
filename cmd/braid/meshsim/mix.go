package meshsim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// The kinds of churn.
const (
	opFlap      = "flap"
	opScaleUp   = "scale-up"
	opScaleDown = "scale-down"
	opJoin      = "join"
	opLeave     = "leave"
)

var opKinds = []string{opFlap, opScaleUp, opScaleDown, opJoin, opLeave}

// Mix weighs the kinds of churn.
type Mix map[string]float64

// DefaultMix is mostly endpoint changes, with a cluster joining or leaving
// now and then.
const DefaultMix = "flap=90,scale-up=4,scale-down=4,join=1,leave=1"

// ParseMix parses "kind=weight,..." with the kinds flap, scale-up,
// scale-down, join and leave; kinds left out weigh zero.
func ParseMix(s string) (Mix, error) {
	m := Mix{}
	total := 0.0
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("churn mix %q: want kind=weight,... with kinds %s", s, strings.Join(opKinds, ", "))
		}
		if !slices.Contains(opKinds, k) {
			return nil, fmt.Errorf("churn mix %q: unknown kind %q (want %s)", s, k, strings.Join(opKinds, ", "))
		}
		w, err := strconv.ParseFloat(v, 64)
		if err != nil || w < 0 || w > 1e6 {
			return nil, fmt.Errorf("churn mix %q: weight of %s must be a number in 0..1000000", s, k)
		}
		m[k] += w
		total += w
	}
	if total == 0 {
		return nil, fmt.Errorf("churn mix %q: every weight is zero", s)
	}
	return m, nil
}

// pick draws a kind by weight.
func (m Mix) pick(r *rand.Rand) string {
	total := 0.0
	for _, k := range opKinds {
		total += m[k]
	}
	x := r.Float64() * total
	for _, k := range opKinds {
		if x < m[k] {
			return k
		}
		x -= m[k]
	}
	return opFlap
}

func (m Mix) String() string {
	var parts []string
	for _, k := range opKinds {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", k, m[k]))
		}
	}
	return strings.Join(parts, ",")
}
