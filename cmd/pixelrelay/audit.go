package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pixelrelay/pixelrelay/relay"
)

const auditUsage = `usage: pixelrelay audit verify FILE [FILE...]

Checks the audit log's hash chain: every line must be sealed with the hash
of its own content and carry the hash of the line before it. After log
rotation, give the files oldest first (audit.jsonl.2 audit.jsonl.1
audit.jsonl): they are checked as one chain, including the links between
them. Exit 0 when the chain is intact; exit 1 naming the file and the first
bad line otherwise.`

func runAudit(env *cmdEnv, args []string) int {
	fs := newFlagSet("audit", auditUsage, env.stderr)
	rest, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if len(rest) < 2 || rest[0] != "verify" {
		fmt.Fprintln(env.stderr, auditUsage)
		return 1
	}
	files := rest[1:]
	n, bad, err := relay.VerifyAuditFiles(files)
	var ve *relay.AuditVerifyError
	switch {
	case errors.As(err, &ve):
		fmt.Fprintf(env.stdout, "%s: chain broken at line %d: %s\n", bad, ve.Line, ve.Reason)
		fmt.Fprintf(env.stdout, "line %d: %s\n", ve.Line, truncate(ve.Text, 300))
		fmt.Fprintf(env.stdout, "the %d records before it verify\n", n)
		return 1
	case err != nil:
		fmt.Fprintf(env.stderr, "pixelrelay audit verify: %s: %v\n", bad, err)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: %d records, hash chain intact\n", strings.Join(files, ", "), n)
	return 0
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
