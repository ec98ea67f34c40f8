// Package netnsrun runs a function inside a network namespace without
// leaking the namespace to other goroutines.
//
// Switching namespaces is per OS thread. Do runs the function on a fresh
// goroutine locked to its thread, switches back before unlocking, and, if
// switching back fails, leaves the thread locked so that the runtime
// terminates it when that goroutine exits: no goroutine of the caller ever
// runs on a thread in the wrong namespace. Do is safe for concurrent use.
package netnsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a thread switched into ns and returns fn's error. If ns is
// not open (netns.None()), fn runs on a locked thread in the current
// namespace and may switch it itself (as netns.NewNamed does): the
// thread's namespace is restored afterwards all the same. Sockets and
// devices fn creates stay in the namespace they were created in. A panic
// in fn is raised again in the caller.
func Do(ns netns.NsHandle, fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the namespace is restored: the thread
		// then dies with this goroutine.
		orig, err := netns.Get()
		if err != nil {
			done <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				done <- result{err: fmt.Errorf("enter netns: %w", err)}
				return
			}
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			if res.err == nil {
				res.err = fmt.Errorf("restore netns: %w", err)
			}
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}
