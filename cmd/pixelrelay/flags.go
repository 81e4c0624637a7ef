package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// newFlagSet returns a FlagSet that reports errors instead of exiting, so
// each command maps a usage error to its own exit code (1 everywhere).
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		printFlags(stderr, fs)
	}
	return fs
}

// printFlags lists a FlagSet's flags GNU style (--name VALUE), as users
// type them; the standard PrintDefaults shows -name.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
			if name == "" {
				name = "VALUE"
			}
			line += " " + strings.ToUpper(name)
		}
		fmt.Fprintln(w, line)
		if f.DefValue != "" && f.DefValue != "false" && !strings.Contains(usage, "(default") {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s\n", usage)
	})
}

// parseInterspersed parses GNU-style flags that may appear before, between
// or after positional arguments ("consent show ADDR --json"). The standard
// flag package stops at the first positional argument; users' scripts do
// not. A bare "--" ends flag parsing.
// parseCommand parses a command's flags and positional arguments. stop
// says the command ends here with code: 0 after --help (the usage went to
// stderr), 1 after a usage error (the flag package said what was wrong).
func parseCommand(fs *flag.FlagSet, args []string) (pos []string, code int, stop bool) {
	pos, err := parseInterspersed(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil, 0, true
	case err != nil:
		return nil, 1, true
	}
	return pos, 0, false
}

func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		// fs.Parse consumed a "--" terminator if the remaining args follow it.
		if consumedTerminator(args, rest) {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func consumedTerminator(args, rest []string) bool {
	i := len(args) - len(rest) - 1
	return i >= 0 && args[i] == "--"
}

// stringList is a repeatable string flag (--allow-net A --allow-net B).
// timeFlag is an RFC 3339 time given on the command line; the zero time
// means the flag was not given.
type timeFlag struct{ t *time.Time }

func (f timeFlag) String() string {
	if f.t == nil || f.t.IsZero() {
		return ""
	}
	return f.t.Format(time.RFC3339Nano)
}

func (f timeFlag) Set(v string) error {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return errors.New("not an RFC 3339 time (e.g. 2026-05-01T10:00:00Z)")
	}
	*f.t = t
	return nil
}

type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}
