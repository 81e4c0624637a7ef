package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pixelrelay/pixelrelay/report"
)

const reportUsage = `usage: pixelrelay report --html OUT [--title T] [--top N] AUDIT_LOG...

Writes one self-contained HTML page from audit logs, for a compliance
officer: messages relayed and the share with trackers, trackers by vendor,
the action taken for each recipient's copy, recipients' consent states, and
the top senders and campaigns. The page loads nothing from the network and
shows counts only, never an address.

An AUDIT_LOG is a file written by serve --audit-log, a rotated copy (gzip
is read as is), the output of scan --json, or - for stdin. Give rotated
logs oldest first: the report then checks their hash chain across files.
Lines that are not records are skipped, counted and listed in the report.
OUT is replaced only once the whole report is written; - writes to stdout.

exit codes: 0 the report was written, 1 usage error or an input or the
output could not be read or written.

flags:`

func runReport(env *cmdEnv, args []string) int {
	fs := newFlagSet("report", reportUsage, env.stderr)
	out := fs.String("html", "", "write the HTML report to `FILE` (- for stdout)")
	title := fs.String("title", "", "heading of the report (default: Open-tracking audit report)")
	top := fs.Int("top", 10, "rows in the top senders and campaigns tables")
	paths, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if *out == "" {
		fmt.Fprintln(env.stderr, "pixelrelay report: --html OUT is required (the file to write the report to)")
		return 1
	}
	if len(paths) == 0 {
		fmt.Fprintln(env.stderr, "pixelrelay report: no AUDIT_LOG given; name the audit log files (serve --audit-log), oldest first")
		return 1
	}
	if *top < 1 {
		fmt.Fprintln(env.stderr, "pixelrelay report: --top must be at least 1")
		return 1
	}
	if err := checkNotInput(*out, paths); err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay report: %v\n", err)
		return 1
	}

	sum := report.NewSummary()
	for _, p := range paths {
		if err := readReportInput(sum, p, env.stdin); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay report: %v\n", err)
			return 1
		}
	}
	opts := report.Options{Title: *title, Generated: time.Now(), Version: version, Top: *top}
	if err := writeReport(*out, env.stdout, sum, opts); err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay report: %v\n", err)
		return 1
	}

	c := sum.Counts()
	var parts []string
	if c.AuditMessages > 0 || c.ScanMessages == 0 {
		parts = append(parts, fmt.Sprintf("%d audit %s", c.AuditMessages, plural(c.AuditMessages, "record", "records")))
	}
	if c.ScanMessages > 0 {
		parts = append(parts, fmt.Sprintf("%d scanned %s", c.ScanMessages, plural(c.ScanMessages, "message", "messages")))
	}
	msg := fmt.Sprintf("%s from %d %s", strings.Join(parts, " and "), len(paths), plural(len(paths), "file", "files"))
	if c.Skipped > 0 {
		msg += fmt.Sprintf("; %d %s skipped (listed in the report)", c.Skipped, plural(c.Skipped, "line", "lines"))
	}
	if len(c.ChainBroken) > 0 {
		msg += fmt.Sprintf("; hash chain broken in %s (run pixelrelay audit verify FILE)", strings.Join(c.ChainBroken, ", "))
	}
	if *out != "-" {
		fmt.Fprintf(env.stderr, "wrote %s: %s\n", *out, msg)
	} else {
		fmt.Fprintf(env.stderr, "pixelrelay report: %s\n", msg)
	}
	return 0
}

// checkNotInput refuses an OUT that is one of the inputs: replacing an
// audit log with its own report would destroy the evidence.
func checkNotInput(out string, inputs []string) error {
	if out == "-" {
		return nil
	}
	ost, err := os.Stat(out)
	if err != nil {
		return nil // a new file cannot be an input
	}
	for _, in := range inputs {
		if in == "-" {
			continue
		}
		if ist, err := os.Stat(in); err == nil && os.SameFile(ost, ist) {
			return fmt.Errorf("--html %s is also an input; writing the report there would overwrite the audit log", out)
		}
	}
	return nil
}

func readReportInput(sum *report.Summary, path string, stdin io.Reader) error {
	if path == "-" {
		if err := sum.Read(stdin, "(stdin)"); err != nil {
			return err
		}
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot read audit log: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory; name the audit log files in it", path)
	}
	return sum.Read(f, path)
}

// writeReport writes the page to a temporary file beside out and renames it
// into place, so a failure never leaves half a report where a whole one
// was.
func writeReport(out string, stdout io.Writer, sum *report.Summary, opts report.Options) error {
	if out == "-" {
		return report.WriteHTML(stdout, sum, opts)
	}
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".*")
	if err != nil {
		return fmt.Errorf("cannot write the report: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op
	if err := report.WriteHTML(tmp, sum, opts); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	// The report holds counts, not addresses: readable like any document.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("cannot write the report: %w", err)
	}
	return nil
}
