package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/pixelrelay/pixelrelay/consent"
)

// importFlags are `consent import`'s own flags.
type importFlags struct {
	format, source, textVersion, textSHA256 string
	at                                      time.Time
	weakProof, noProgress                   bool
	maps                                    stringList
}

func addImportFlags(fs *flag.FlagSet) *importFlags {
	f := &importFlags{}
	fs.StringVar(&f.format, "format", consent.FormatNative, "native, mailchimp or hubspot")
	fs.StringVar(&f.source, "source", "", "collection point for rows that name none")
	fs.StringVar(&f.textVersion, "text-version", "", "consent text version for rows that carry none (mapped columns)")
	fs.StringVar(&f.textSHA256, "text-sha256", "", "consent text SHA-256 for rows that carry none")
	fs.Var(timeFlag{&f.at}, "at", "RFC 3339 `TIME` for rows whose export records none")
	fs.BoolVar(&f.weakProof, "weak-proof", false, "accept grants without evidence or text reference, marked weak (HubSpot consent needs it)")
	fs.BoolVar(&f.noProgress, "no-progress", false, "no progress bar, even on a terminal")
	fs.Var(&f.maps, "map", "COLUMN=PURPOSE: a Mailchimp or HubSpot column that really records that consent (repeatable)")
	return f
}

// importSource is one CSV stream to import: the file, stdin, or one member
// of a Mailchimp ZIP.
type importSource struct {
	name string // prefix for report lines; "" for a single file
	size int64  // for the progress bar; -1 unknown
	open func() (io.ReadCloser, error)
}

func runConsentImport(c *consentCtx) int {
	f := c.extra.(*importFlags)
	if len(c.args) != 1 {
		return c.fail("expected one FILE (or - for stdin), got %d arguments", len(c.args))
	}
	opts := consent.ImportOptions{
		Format: f.format, Tenant: c.tenant, Actor: c.actor, WeakProof: f.weakProof, Source: f.source,
		TextVersion: f.textVersion, TextSHA256: f.textSHA256, At: f.at,
	}
	for _, m := range f.maps {
		col, purpose, ok := strings.Cut(m, "=")
		if !ok || col == "" || purpose == "" {
			return c.fail("--map %q must be COLUMN=PURPOSE, such as --map \"Email open tracking=open_tracking\"", m)
		}
		if opts.Map == nil {
			opts.Map = map[string]string{}
		}
		opts.Map[col] = purpose
	}
	sources, closeAll, err := importSources(c.args[0], c.env.stdin)
	if err != nil {
		return c.fail("%v", err)
	}
	defer closeAll()
	if len(sources) > 1 && opts.Format != consent.FormatMailchimp {
		return c.fail("%s is a ZIP archive; only a Mailchimp audience export is read from a ZIP (--format mailchimp)", c.args[0])
	}

	var total consent.ImportResult
	total.Rejected = []consent.Rejection{}
	var fatal error
	for _, src := range sources {
		prefix := ""
		if src.name != "" {
			prefix = src.name + " "
		}
		o := opts
		o.OnReject = func(r consent.Rejection) {
			if !c.json {
				fmt.Fprintf(c.env.stdout, "%sline %d: %s\n", prefix, r.Line, r.Reason)
			}
		}
		rc, err := src.open()
		if err != nil {
			fatal = err
			break
		}
		var r io.Reader = rc
		bar := c.progressBar(src, f.noProgress)
		if bar != nil {
			pr := progressbar.NewReader(rc, bar)
			r = &pr
		}
		res, err := c.backend.Import(c.ctx, r, o)
		rc.Close()
		if bar != nil {
			bar.Finish()
			bar.Clear()
		}
		addResult(&total, res, prefix)
		if err != nil {
			fatal = fmt.Errorf("%s%w", prefix, err)
			break
		}
	}
	if c.json {
		if fatal != nil {
			c.printJSON(struct {
				Error string `json:"error"`
				consent.ImportResult
			}{fatal.Error(), total})
			return 1
		}
		c.printJSON(total)
	} else {
		fmt.Fprintln(c.env.stdout, importSummary(total))
		if fatal != nil {
			c.failErr(fatal)
		}
	}
	if fatal != nil || total.RejectedCount > 0 {
		return 1
	}
	return 0
}

func addResult(total *consent.ImportResult, res consent.ImportResult, prefix string) {
	total.Rows += res.Rows
	total.Imported += res.Imported
	total.Unchanged += res.Unchanged
	total.Skipped += res.Skipped
	total.RejectedCount += res.RejectedCount
	for k, v := range res.SkipReasons {
		if total.SkipReasons == nil {
			total.SkipReasons = map[string]int{}
		}
		total.SkipReasons[k] += v
	}
	for _, r := range res.Rejected {
		if prefix != "" {
			r.Reason = strings.TrimSpace(prefix) + ": " + r.Reason
		}
		total.Rejected = append(total.Rejected, r)
	}
}

// importSummary is the last line of an import report.
func importSummary(r consent.ImportResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d rows: %d imported, %d unchanged, %d skipped, %d rejected", r.Rows, r.Imported, r.Unchanged, r.Skipped, r.RejectedCount)
	if len(r.SkipReasons) > 0 {
		reasons := make([]string, 0, len(r.SkipReasons))
		for k, v := range r.SkipReasons {
			reasons = append(reasons, fmt.Sprintf("%d %s", v, k))
		}
		sort.Strings(reasons)
		fmt.Fprintf(&b, "\nskipped: %s", strings.Join(reasons, "; "))
	}
	if r.RejectedCount > len(r.Rejected) && r.RejectedCount > 0 {
		fmt.Fprintf(&b, "\n(the server listed %d of the %d rejected rows)", len(r.Rejected), r.RejectedCount)
	}
	return b.String()
}

// progressBar draws on stderr when it is a terminal; nil otherwise.
func (c *consentCtx) progressBar(src importSource, off bool) *progressbar.ProgressBar {
	if off || c.json {
		return nil
	}
	f, ok := c.env.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	desc := "importing"
	if src.name != "" {
		desc = "importing " + src.name
	}
	return progressbar.NewOptions64(src.size,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(true),
	)
}

// importSources opens FILE: stdin for "-", each CSV of a ZIP (a Mailchimp
// audience export is a ZIP of subscribed, unsubscribed and cleaned CSVs),
// or the file itself.
func importSources(path string, stdin io.Reader) ([]importSource, func(), error) {
	nop := func() {}
	if path == "-" {
		return []importSource{{size: -1, open: func() (io.ReadCloser, error) { return io.NopCloser(stdin), nil }}}, nop, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nop, fmt.Errorf("cannot read %s: %v", path, errors.Unwrap(err))
	}
	st, err := f.Stat()
	if err != nil || st.IsDir() {
		f.Close()
		return nil, nop, fmt.Errorf("%s is not a file", path)
	}
	magic := make([]byte, 4)
	n, _ := io.ReadFull(f, magic)
	if !bytes.Equal(magic[:n], []byte("PK\x03\x04")) {
		f.Close()
		return []importSource{{size: st.Size(), open: func() (io.ReadCloser, error) { return os.Open(path) }}}, nop, nil
	}
	zr, err := zip.NewReader(f, st.Size())
	if err != nil {
		f.Close()
		return nil, nop, fmt.Errorf("%s looks like a ZIP archive but cannot be read: %v", path, err)
	}
	var out []importSource
	for _, zf := range zr.File {
		if zf.FileInfo().IsDir() || !strings.EqualFold(filepath.Ext(zf.Name), ".csv") || strings.HasPrefix(filepath.Base(zf.Name), "._") {
			continue
		}
		zf := zf
		out = append(out, importSource{name: zf.Name, size: int64(zf.UncompressedSize64), open: func() (io.ReadCloser, error) { return zf.Open() }})
	}
	if len(out) == 0 {
		f.Close()
		return nil, nop, fmt.Errorf("%s holds no .csv file", path)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, func() { f.Close() }, nil
}

// exportFlags are `consent export`'s own flags.
type exportFlags struct {
	format, output string
	allTenants     bool
}

func addExportFlags(fs *flag.FlagSet) *exportFlags {
	f := &exportFlags{}
	fs.StringVar(&f.format, "format", consent.ExportCSV, "csv (native columns, one row per event) or jsonl (one show --json object per subject)")
	fs.StringVar(&f.output, "output", "", "write to FILE instead of stdout")
	fs.BoolVar(&f.allTenants, "all-tenants", false, "export every tenant, not only --tenant")
	return f
}

func runConsentExport(c *consentCtx) int {
	f := c.extra.(*exportFlags)
	opts := consent.ExportOptions{Format: f.format, Tenant: c.tenant, AllTenants: f.allTenants}
	switch len(c.args) {
	case 0:
	case 1:
		opts.Address = c.args[0]
	default:
		return c.fail("expected at most one address")
	}
	if f.output == "" {
		w := bufio.NewWriterSize(c.env.stdout, 64<<10)
		if err := c.backend.Export(c.ctx, w, opts); err != nil {
			return c.failErr(err)
		}
		if err := w.Flush(); err != nil {
			return c.failErr(err)
		}
		return 0
	}
	n, err := writeFileAtomic(f.output, func(w io.Writer) error { return c.backend.Export(c.ctx, w, opts) })
	if err != nil {
		return c.failErr(err)
	}
	fmt.Fprintf(c.env.stderr, "wrote %d bytes to %s\n", n, f.output)
	return 0
}

func runConsentBackup(c *consentCtx) int {
	if len(c.args) != 1 {
		return c.fail("expected one FILE to write the snapshot to")
	}
	out := c.args[0]
	if !c.target.Remote() && sameFile(out, c.target.Path) {
		return c.fail("%s is the database itself; give another file", out)
	}
	n, err := writeFileAtomic(out, func(w io.Writer) error {
		_, err := c.backend.Backup(c.ctx, w)
		return err
	})
	if err != nil {
		return c.failErr(err)
	}
	// A snapshot that does not open is no backup: check it now, not on the
	// day it is needed.
	b, err := consent.Open(out, consent.Options{ReadOnly: true})
	if err != nil {
		return c.fail("the snapshot in %s does not open: %v", out, err)
	}
	b.Close()
	if c.json {
		return c.printJSON(map[string]any{"file": out, "bytes": n})
	}
	fmt.Fprintf(c.env.stdout, "wrote a %d-byte snapshot to %s\n", n, out)
	return 0
}

// writeFileAtomic writes through a temporary file in the same directory
// and renames it into place after fsync, so that an interrupted run never
// leaves a half-written file under the final name. It returns the size.
func writeFileAtomic(path string, write func(w io.Writer) error) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("cannot write %s: %v", path, errors.Unwrap(err))
	}
	defer os.Remove(tmp.Name())
	err = write(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	var n int64
	if err == nil {
		n, err = tmp.Seek(0, io.SeekCurrent)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return n, err
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
