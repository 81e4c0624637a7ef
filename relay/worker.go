package relay

import (
	"fmt"
	"runtime/debug"
	"sync"
)

// worker runs a session's message work on one goroutine that lives as
// long as the session.
//
// go-smtp calls LMTPData, and Data under BDAT, on a new goroutine for
// every message. A new goroutine starts with a small stack, and the
// rewrite's call chain is deep enough that the runtime grew and copied
// that stack several times per message. Over LMTP on a connection that
// carries many messages, as Postfix's does, stack copying was 3 % of
// pixelrelay's CPU, and none over SMTP with DATA, which runs on the
// connection's own goroutine. A worker's stack grows once and stays grown.
type worker struct {
	once sync.Once
	jobs chan *job
	quit chan struct{}
	stop sync.Once
}

type job struct {
	fn   func()
	done chan any // the panic fn raised, or nil
}

// run calls fn on the worker and returns when it has returned. A panic in
// fn is raised again in the caller, where go-smtp recovers it. Once the
// session is over (close), fn runs on the caller's goroutine.
func (w *worker) run(fn func()) {
	w.init(true)
	j := &job{fn: fn, done: make(chan any, 1)}
	select {
	case w.jobs <- j:
	case <-w.quit:
		fn()
		return
	}
	if p := <-j.done; p != nil {
		panic(p)
	}
}

func (w *worker) loop() {
	for {
		select {
		case j := <-w.jobs:
			j.done <- w.call(j.fn)
		case <-w.quit:
			return
		}
	}
}

func (w *worker) call(fn func()) (p any) {
	defer func() {
		if r := recover(); r != nil {
			p = fmt.Sprintf("%v\n\non the session's worker:\n%s", r, debug.Stack())
		}
	}()
	fn()
	return nil
}

// close ends the worker once the job it may be running is done. It does
// not wait: under BDAT, go-smtp may log the session out while the
// message still streams, and that job needs the connection's goroutine
// to go on.
func (w *worker) close() {
	w.init(false) // never started: it never will, and run goes inline
	w.stop.Do(func() { close(w.quit) })
}

// init sets the worker up on first use; start starts its goroutine.
func (w *worker) init(start bool) {
	w.once.Do(func() {
		w.quit = make(chan struct{})
		if start {
			w.jobs = make(chan *job)
			go w.loop()
		}
	})
}
