package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pixelrelay/pixelrelay/consent"
)

const consentUsage = `usage: pixelrelay consent COMMAND [FLAGS] [ARGS]

Per-recipient, per-purpose consent with its proof history.

commands:
  grant ADDR       record that ADDR granted consent for --purpose
  deny ADDR        record that ADDR refused when asked
  withdraw ADDR    record that ADDR withdrew an earlier grant
  show ADDR        current states and full history (--json: CONTRACTS.md shape)
  erase ADDR       erase ADDR's address, history and states (GDPR art. 17)
  import FILE      import a CSV (--format native|mailchimp|hubspot; FILE may be
                   a Mailchimp audience export .zip, or - for stdin)
  export [ADDR]    write every subject's history, or ADDR's (--format csv|jsonl)
  backup FILE      write a consistent snapshot of the whole database to FILE
  verify           check the consent event hash chain (local file only)

common flags:
  --db FILE        database file (default ./pixelrelay.db, or PIXELRELAY_DB)
  --server URL     go through a running server's admin API instead; the token
                   comes from PIXELRELAY_API_TOKEN
  --tenant T       the controller (default "default")
  --purpose P      open_tracking (default), click_tracking, marketing_email, or
                   a purpose declared in serve's configuration
  --json           machine-readable output

event flags (grant, deny, withdraw):
  --method M       web_form, double_opt_in, preference_center, email_link,
                   import, admin (default) or api
  --source S       collection point: a form URL or id, a campaign
  --text-version V, --text-sha256 H   the consent text the person saw
  --evidence E     a reference to the proof (form submission id, DOI message-id)
  --at RFC3339     when the person acted (default: now)
  --weak-proof     accept a grant without evidence or text reference, marked weak

While serve holds the database, every command without --server exits 1 at
once with "database FILE is in use by a running pixelrelay; use --server URL".
Run 'pixelrelay consent COMMAND --help' for a command's flags.`

// consentBackend is what the consent commands need from the store; the
// local file (*consent.Store, adapted) and the server's API
// (*consent.Client) both provide it.
type consentBackend interface {
	Record(ctx context.Context, ev consent.Event) (consent.Record, error)
	Show(ctx context.Context, tenant, addr string) (consent.Record, error)
	Erase(ctx context.Context, tenant, addr string) error
	Import(ctx context.Context, r io.Reader, opts consent.ImportOptions) (consent.ImportResult, error)
	Export(ctx context.Context, w io.Writer, opts consent.ExportOptions) error
	Backup(ctx context.Context, w io.Writer) (int64, error)
}

// localBackend adapts *consent.Store: the actor of a local erasure is the
// CLI user, and Backup takes no context.
type localBackend struct {
	*consent.Store
	actor string
}

func (l localBackend) Erase(ctx context.Context, tenant, addr string) error {
	return l.Store.Erase(ctx, tenant, addr, l.actor)
}

func (l localBackend) Backup(ctx context.Context, w io.Writer) (int64, error) {
	return l.Store.Backup(w)
}

// consentCmd is one consent subcommand.
type consentCmd struct {
	usage string
	db    dbAccess
	run   func(c *consentCtx) int
	// noPurpose, when set, is why --purpose does not apply. CONTRACTS.md
	// makes --purpose common to every consent command, so its default is
	// accepted everywhere; anything else on a command that would ignore it
	// is refused, rather than, say, erasing every purpose when one was named.
	noPurpose string
}

// consentCtx carries what every subcommand shares.
type consentCtx struct {
	env     *cmdEnv
	name    string
	fs      *flag.FlagSet
	store   *storeFlags
	tenant  string
	purpose string
	json    bool
	args    []string // positional arguments
	target  storeTarget
	backend consentBackend
	local   *consent.Store // nil with --server
	actor   string
	ctx     context.Context
	extra   any // the subcommand's own flags
}

func consentCommands() map[string]consentCmd {
	const allPurposes = "it covers every purpose"
	return map[string]consentCmd{
		"grant":    {usage: "usage: pixelrelay consent grant ADDR [--purpose P] [event flags]", db: dbCreate, run: runConsentEvent(consent.Granted)},
		"deny":     {usage: "usage: pixelrelay consent deny ADDR [--purpose P] [event flags]", db: dbCreate, run: runConsentEvent(consent.Denied)},
		"withdraw": {usage: "usage: pixelrelay consent withdraw ADDR [--purpose P] [event flags]", db: dbCreate, run: runConsentEvent(consent.Withdrawn)},
		"show":     {usage: "usage: pixelrelay consent show ADDR [--json] [--tenant T]", db: dbRead, run: runConsentShow},
		"erase": {usage: "usage: pixelrelay consent erase ADDR [--tenant T]", db: dbWrite, run: runConsentErase,
			noPurpose: "erasure (GDPR art. 17) removes the person from every purpose; to end one purpose, use withdraw --purpose P"},
		"import": {usage: "usage: pixelrelay consent import [--format native|mailchimp|hubspot] FILE", db: dbCreate, run: runConsentImport,
			noPurpose: "a native CSV names the purpose per row, and --map maps a column to one"},
		"export": {usage: "usage: pixelrelay consent export [ADDR] [--format csv|jsonl] [--all-tenants] [--output FILE]", db: dbRead, run: runConsentExport, noPurpose: allPurposes},
		"backup": {usage: "usage: pixelrelay consent backup FILE", db: dbRead, run: runConsentBackup, noPurpose: "a backup is the whole database"},
		"verify": {usage: "usage: pixelrelay consent verify [--json] [--db FILE]", db: dbRead, run: runConsentVerify, noPurpose: "it checks the whole chain"},
	}
}

// checkPurpose refuses --purpose where it would be ignored.
func (c *consentCtx) checkPurpose(sub consentCmd) bool {
	if sub.noPurpose == "" {
		return true
	}
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == "purpose" })
	// Erasing cannot be undone: whoever names a purpose there, even the
	// default one, expects something narrower than what would happen.
	if set && (c.purpose != consent.PurposeOpenTracking || c.name == "consent erase") {
		c.fail("--purpose does not apply to %s: %s", c.name, sub.noPurpose)
		return false
	}
	return true
}

func runConsent(env *cmdEnv, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(env.stderr, consentUsage)
		return 1
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		fmt.Fprintln(env.stdout, consentUsage)
		return 0
	}
	name := args[0]
	sub, ok := consentCommands()[name]
	if !ok {
		fmt.Fprintf(env.stderr, "pixelrelay consent: unknown command %q; run 'pixelrelay consent --help'\n", name)
		return 1
	}
	c := &consentCtx{env: env, name: "consent " + name}
	c.fs = newFlagSet(c.name, sub.usage, env.stderr)
	c.store = addStoreFlags(c.fs)
	c.fs.StringVar(&c.tenant, "tenant", consent.DefaultTenant, "tenant (controller)")
	c.fs.StringVar(&c.purpose, "purpose", consent.PurposeOpenTracking, "purpose")
	c.fs.BoolVar(&c.json, "json", false, "machine-readable output")
	switch name {
	case "grant", "deny", "withdraw":
		c.extra = addEventFlags(c.fs)
	case "import":
		c.extra = addImportFlags(c.fs)
	case "export":
		c.extra = addExportFlags(c.fs)
	}
	pos, code, done := parseCommand(c.fs, args[1:])
	if done {
		return code
	}
	c.args = pos
	if !c.checkPurpose(sub) {
		return 1
	}
	var err error
	if c.target, err = c.store.resolve(env); err != nil {
		return failDBErr(env.stderr, c.name, err)
	}

	// Ctrl-C stops an import between batches; what was committed stays.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c.ctx = ctx
	c.actor = cliActor(env)
	if c.target.Remote() {
		c.backend = c.target.Client()
	} else {
		s, err := openStore(env, c.target, sub.db)
		if err != nil {
			return failDBErr(env.stderr, c.name, err)
		}
		defer s.Close()
		c.local = s
		c.backend = localBackend{Store: s, actor: c.actor}
	}
	return sub.run(c)
}

// fail prints an error for this subcommand and returns 1.
func (c *consentCtx) fail(format string, args ...any) int {
	fmt.Fprintf(c.env.stderr, "pixelrelay %s: %s\n", c.name, fmt.Sprintf(format, args...))
	return 1
}

func (c *consentCtx) failErr(err error) int { return failDBErr(c.env.stderr, c.name, err) }

// oneAddress returns the single ADDR argument.
func (c *consentCtx) oneAddress() (string, bool) {
	if len(c.args) != 1 {
		c.fail("expected one address, got %d arguments; %s", len(c.args), strings.TrimPrefix(consentCommands()[strings.TrimPrefix(c.name, "consent ")].usage, "usage: "))
		return "", false
	}
	return c.args[0], true
}

func (c *consentCtx) printJSON(v any) int {
	enc := json.NewEncoder(c.env.stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return c.failErr(err)
	}
	return 0
}

// eventFlags are the proof fields of grant, deny and withdraw.
type eventFlags struct {
	method, source, textVersion, textSHA256, evidence string
	at                                                time.Time
	weakProof                                         bool
}

func addEventFlags(fs *flag.FlagSet) *eventFlags {
	f := &eventFlags{}
	fs.StringVar(&f.method, "method", consent.MethodAdmin, "how consent was collected: web_form, double_opt_in, preference_center, email_link, import, admin, api")
	fs.StringVar(&f.source, "source", "", "collection point (form URL or id, campaign)")
	fs.StringVar(&f.textVersion, "text-version", "", "version of the consent text shown")
	fs.StringVar(&f.textSHA256, "text-sha256", "", "SHA-256 of the exact consent text shown")
	fs.StringVar(&f.evidence, "evidence", "", "reference to the proof (form submission id, DOI message-id)")
	fs.Var(timeFlag{&f.at}, "at", "when the person acted, as an RFC 3339 `TIME` (default: now)")
	fs.BoolVar(&f.weakProof, "weak-proof", false, "accept a grant without evidence or text reference, marked as weak proof")
	return f
}

func runConsentEvent(state consent.State) func(c *consentCtx) int {
	return func(c *consentCtx) int {
		addr, ok := c.oneAddress()
		if !ok {
			return 1
		}
		f := c.extra.(*eventFlags)
		ev := consent.Event{
			Tenant: c.tenant, Address: addr, Purpose: c.purpose, State: state, Method: f.method,
			Source: f.source, TextVersion: f.textVersion, TextSHA256: f.textSHA256, Evidence: f.evidence,
			Actor: c.actor, WeakProof: f.weakProof, OccurredAt: f.at,
		}
		rec, err := c.backend.Record(c.ctx, ev)
		if err != nil {
			return c.failErr(err)
		}
		if c.json {
			return c.printJSON(rec)
		}
		ps := rec.States[ev.Purpose]
		fmt.Fprintf(c.env.stdout, "%s: %s %s since %s (tenant %s, event %s)\n", rec.Address, ev.Purpose, ps.State,
			ps.Since.Format(time.RFC3339), rec.Tenant, ps.EventID)
		return 0
	}
}

func runConsentShow(c *consentCtx) int {
	addr, ok := c.oneAddress()
	if !ok {
		return 1
	}
	rec, err := c.backend.Show(c.ctx, c.tenant, addr)
	if err != nil {
		return c.failErr(err)
	}
	if c.json {
		return c.printJSON(rec)
	}
	writeRecord(c.env.stdout, rec, c.declaredPurposes())
	return 0
}

// declaredPurposes lists the purposes to print as unknown when absent.
func (c *consentCtx) declaredPurposes() []string {
	if c.local != nil {
		return c.local.Purposes()
	}
	return append([]string{consent.PurposeClickTracking, consent.PurposeMarketingEmail, consent.PurposeOpenTracking}, c.target.Opts.Purposes...)
}

// writeRecord prints a record for people: states first, then the history.
func writeRecord(w io.Writer, rec consent.Record, purposes []string) {
	fmt.Fprintf(w, "%s (tenant %s)\n", rec.Address, rec.Tenant)
	if rec.Pseudonym != "" {
		fmt.Fprintf(w, "pseudonym  %s\n", rec.Pseudonym)
	}
	if rec.ErasedAt != nil {
		fmt.Fprintf(w, "erased     %s (GDPR art. 17); anything below was recorded after it\n", rec.ErasedAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	names := append([]string(nil), purposes...)
	for p := range rec.States {
		names = append(names, p)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	seen := map[string]bool{}
	for _, p := range names {
		if seen[p] {
			continue
		}
		seen[p] = true
		if ps, ok := rec.States[p]; ok {
			fmt.Fprintf(tw, "%s\t%s\tsince %s\tevent %s\n", p, ps.State, ps.Since.Format(time.RFC3339), ps.EventID)
		} else {
			fmt.Fprintf(tw, "%s\tunknown\t\t\n", p)
		}
	}
	tw.Flush()
	if len(rec.History) == 0 {
		fmt.Fprintln(w, "\nno history")
		return
	}
	fmt.Fprintln(w, "\nhistory, oldest first:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, h := range rec.History {
		var proof []string
		for _, kv := range [][2]string{{"source", h.Source}, {"text", h.TextVersion}, {"text-sha256", h.TextSHA256}, {"evidence", h.Evidence}} {
			if kv[1] != "" {
				proof = append(proof, kv[0]+"="+kv[1])
			}
		}
		if h.WeakProof {
			proof = append(proof, "WEAK PROOF")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s -> %s\t%s\t%s\tby %s\n", h.OccurredAt.Format(time.RFC3339), h.Purpose, h.Previous, h.State,
			h.Method, strings.Join(proof, " "), h.Actor)
	}
	tw.Flush()
}

func runConsentErase(c *consentCtx) int {
	addr, ok := c.oneAddress()
	if !ok {
		return 1
	}
	err := c.backend.Erase(c.ctx, c.tenant, addr)
	erased := err == nil
	if errors.Is(err, consent.ErrNotFound) {
		err = nil
	}
	if err != nil {
		return c.failErr(err)
	}
	if c.json {
		return c.printJSON(map[string]bool{"erased": erased})
	}
	if erased {
		fmt.Fprintf(c.env.stdout, "%s: erased from tenant %s; its events are now tombstones and the erasure is recorded\n", strings.TrimSpace(addr), c.tenant)
	} else {
		fmt.Fprintf(c.env.stdout, "%s: nothing is stored in tenant %s; nothing to erase\n", strings.TrimSpace(addr), c.tenant)
	}
	return 0
}

func runConsentVerify(c *consentCtx) int {
	if c.local == nil {
		return c.fail("verify reads the database file itself; with a running server, verify a snapshot:\n" +
			"  pixelrelay consent backup snapshot.db --server URL && pixelrelay consent verify --db snapshot.db")
	}
	if len(c.args) != 0 {
		return c.fail("verify takes no arguments")
	}
	st, err := c.local.Chain(c.ctx)
	if err != nil {
		if c.json {
			c.printJSON(map[string]any{"ok": false, "error": err.Error()})
			return 1
		}
		return c.failErr(err)
	}
	if c.json {
		return c.printJSON(map[string]any{"ok": true, "events": st.Events, "tombstones": st.Tombstones, "erasures": st.Erasures, "head": st.Head})
	}
	fmt.Fprintf(c.env.stdout, "consent chain intact: %d events (%d erased, %d erasures); head %s\n", st.Events, st.Tombstones, st.Erasures, st.Head)
	fmt.Fprintln(c.env.stdout, "record the head somewhere the database's owner cannot rewrite; it proves later that no history was changed")
	return 0
}
