package benchkit

import (
	"fmt"
	"slices"
	"time"
)

// Latencies is a sample of durations.
type Latencies []time.Duration

// Pct returns the p-th percentile (0..100, nearest rank below), zero for
// an empty sample.
func (l Latencies) Pct(p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

func (l Latencies) String() string {
	return fmt.Sprintf("p50 %v  p90 %v  p99 %v  max %v", l.Pct(50).Round(time.Microsecond), l.Pct(90).Round(time.Microsecond),
		l.Pct(99).Round(time.Microsecond), l.Pct(100).Round(time.Microsecond))
}
