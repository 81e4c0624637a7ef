// Command pixelrelay enforces open-tracking consent at the last hop of
// outbound mail. This file only wires subcommands; each lives in its own
// file and the packages relay, rewrite and consent do the work.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// command is one subcommand. run returns the process exit code so that each
// command owns its own contract (CONTRACTS.md pins several of them).
type command struct {
	summary string
	usage   string
	run     func(env *cmdEnv, args []string) int
}

// cmdEnv carries the process's streams so that commands are testable
// in-process without touching the real stdin/stdout.
type cmdEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

func commands() map[string]command {
	return map[string]command{
		"serve":   {"run the SMTP relay", serveUsage, runServe},
		"rewrite": {"filter one message from stdin to stdout", rewriteUsage, runRewrite},
		"scan":    {"audit .eml, mbox, Maildir and .html files for trackers", scanUsage, runScan},
		"consent": {"manage per-recipient consent records", consentUsage, runConsent},
		"audit":   {"verify the audit log's hash chain", auditUsage, runAudit},
		"beacon":  {"show delivery-only beacon statistics", beaconUsage, runBeacon},
		"report":  {"write a self-contained HTML report from audit logs", reportUsage, runReport},
		"version": {"print the version", "usage: pixelrelay version", runVersion},
		"help":    {"show help for a command", "usage: pixelrelay help [COMMAND]", runHelp},

		"healthcheck": {"exit 0 if a running server answers /healthz (for container health checks)", healthcheckUsage, runHealthcheck},
	}
}

func main() {
	env := &cmdEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(dispatch(env, os.Args[1:]))
}

func dispatch(env *cmdEnv, args []string) int {
	if len(args) == 0 {
		printOverview(env.stderr)
		return 1
	}
	name := args[0]
	if isHelpFlag(name) {
		printOverview(env.stdout)
		return 0
	}
	switch name {
	case "--version", "-version":
		name = "version"
	}
	cmd, ok := commands()[name]
	if !ok {
		fmt.Fprintf(env.stderr, "pixelrelay: unknown command %q; run 'pixelrelay help' for the list\n", name)
		return 1
	}
	return cmd.run(env, args[1:])
}

func printOverview(w io.Writer) {
	fmt.Fprintf(w, "pixelrelay %s: strips open-tracking pixels for recipients who did not consent\n\n", version)
	fmt.Fprintln(w, "usage: pixelrelay COMMAND [FLAGS] [ARGS]")
	fmt.Fprintln(w, "\ncommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nrun 'pixelrelay help COMMAND' for a command's flags")
}

func runVersion(env *cmdEnv, args []string) int {
	if len(args) > 0 && isHelpFlag(args[0]) {
		fmt.Fprintln(env.stderr, "usage: pixelrelay version")
		return 0
	}
	fmt.Fprintf(env.stdout, "pixelrelay %s\n", version)
	return 0
}

func isHelpFlag(s string) bool { return s == "-h" || s == "--help" || s == "-help" }

func runHelp(env *cmdEnv, args []string) int {
	if len(args) == 0 || isHelpFlag(args[0]) {
		printOverview(env.stdout)
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "pixelrelay: unknown command %q\n", args[0])
		return 1
	}
	// The command's own --help lists its flags; help is asked for, so it
	// goes to stdout and succeeds.
	helpEnv := *env
	helpEnv.stderr = env.stdout
	cmd.run(&helpEnv, append(args[1:], "--help"))
	return 0
}
