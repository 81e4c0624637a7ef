package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/pixelrelay/pixelrelay/relay"
)

const auditUsage = `usage: pixelrelay audit verify FILE

Checks the audit log's hash chain: every line must be sealed with the hash
of its own content and carry the hash of the line before it. Exit 0 when
the chain is intact; exit 1 naming the first bad line otherwise.`

func runAudit(env *cmdEnv, args []string) int {
	fs := newFlagSet("audit", auditUsage, env.stderr)
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return 1
	}
	if len(rest) != 2 || rest[0] != "verify" {
		fmt.Fprintln(env.stderr, auditUsage)
		return 1
	}
	path := rest[1]
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay audit verify: %v\n", err)
		return 1
	}
	defer f.Close()
	n, err := relay.VerifyAuditLog(f)
	var ve *relay.AuditVerifyError
	switch {
	case errors.As(err, &ve):
		fmt.Fprintf(env.stdout, "%s: chain broken at line %d: %s\n", path, ve.Line, ve.Reason)
		fmt.Fprintf(env.stdout, "line %d: %s\n", ve.Line, truncate(ve.Text, 300))
		fmt.Fprintf(env.stdout, "the %d lines before it verify\n", n)
		return 1
	case err != nil:
		fmt.Fprintf(env.stderr, "pixelrelay audit verify: %s: %v\n", path, err)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: %d records, hash chain intact\n", path, n)
	return 0
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
