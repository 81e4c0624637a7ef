package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/beacon"
	"github.com/pixelrelay/pixelrelay/consent"
)

const beaconUsage = `usage: pixelrelay beacon stats [--json] [--campaign C] [--tenant T|*] [--from YYYY-MM-DD] [--to YYYY-MM-DD]
                         [--db FILE | --server URL]
       pixelrelay beacon keys [--json] [--db FILE | --server URL]
       pixelrelay beacon rotate-key [--revoke-old] [--db FILE | --server URL]

Delivery-only beacons count image loads per campaign and UTC day; they never
identify a recipient. stats shows, per tenant, day and campaign:
  RECIPIENTS   non-consenting recipients counted toward the minimum batch
  WITH BEACON  those whose copies went out once the batch was reached
  IMAGE LOADS  image loads, including privacy proxies such as Apple Mail
               Privacy Protection; a load is not an open, nor a person
--tenant defaults to "default"; --tenant '*' shows every tenant.

rotate-key adds a signing key that signs from then on; beacons already sent
keep counting until their tokens expire. --revoke-old deletes every other key
at once (for a leaked key): beacons already sent stop counting. keys lists the
keys without their secrets. See docs/beacon.md.

With --server URL the command goes through a running server's admin API, with
the token from PIXELRELAY_API_TOKEN; otherwise it opens --db (default
./pixelrelay.db), which fails at once while a server holds it.

exit codes: 0 done, 1 usage, configuration, database or server error.`

func runBeacon(env *cmdEnv, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(env.stderr, beaconUsage)
		return 1
	}
	switch args[0] {
	case "stats":
		return runBeaconStats(env, args[1:])
	case "keys":
		return runBeaconKeys(env, args[1:])
	case "rotate-key":
		return runBeaconRotate(env, args[1:])
	case "-h", "--help", "help":
		fmt.Fprintln(env.stdout, beaconUsage)
		return 0
	}
	fmt.Fprintf(env.stderr, "pixelrelay beacon: unknown subcommand %q; want stats, keys or rotate-key\n", args[0])
	return 1
}

// beaconTarget is where a beacon command reads or writes: the database
// file, or a running server's API.
type beaconTarget struct {
	db     *string
	server *string
}

func addTargetFlags(fs *flag.FlagSet) beaconTarget {
	return beaconTarget{
		db:     fs.String("db", "./pixelrelay.db", "database file"),
		server: fs.String("server", "", "URL of a running pixelrelay's admin API, instead of --db (token from PIXELRELAY_API_TOKEN)"),
	}
}

// parseBeaconFlags parses args and checks what every subcommand shares.
// ok is false when the command is over, with code as its exit code.
func parseBeaconFlags(env *cmdEnv, fs *flag.FlagSet, tgt beaconTarget, args []string) (code int, ok bool) {
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0, false
	}
	if err != nil {
		return 1, false
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.stderr, "pixelrelay beacon %s: unexpected argument %q\n", fs.Name(), pos[0])
		return 1, false
	}
	dbSet := false
	fs.Visit(func(f *flag.Flag) { dbSet = dbSet || f.Name == "db" })
	if dbSet && *tgt.server != "" {
		fmt.Fprintf(env.stderr, "pixelrelay beacon %s: give --db or --server, not both\n", fs.Name())
		return 1, false
	}
	return 0, true
}

func (tgt beaconTarget) client(env *cmdEnv, name string) (*beacon.Client, bool) {
	token := env.getenv("PIXELRELAY_API_TOKEN")
	if token == "" {
		fmt.Fprintf(env.stderr, "pixelrelay beacon %s: --server needs the admin API token in PIXELRELAY_API_TOKEN\n", name)
		return nil, false
	}
	return &beacon.Client{Server: *tgt.server, Token: token}, true
}

// openBeaconDB opens the database file for a beacon command through the
// one opener every command uses: it never creates a file, never waits for a
// server's lock, and reports a damaged file the same way. Close the
// returned store.
func openBeaconDB(env *cmdEnv, path string, access dbAccess) (*consent.Store, error) {
	return openStore(env, storeTarget{Path: path}, access)
}

// failDB reports a database error; the in-use message is printed exactly
// as the contract pins it, without a prefix.
func failDB(env *cmdEnv, name string, err error) int {
	return failDBErr(env.stderr, "beacon "+name, err)
}

func runBeaconStats(env *cmdEnv, args []string) int {
	fs := newFlagSet("stats", beaconUsage, env.stderr)
	asJSON := fs.Bool("json", false, "print a JSON array, as GET /v1/beacons answers")
	campaign := fs.String("campaign", "", "only this campaign key")
	tenant := fs.String("tenant", "default", "only this tenant; * for every tenant")
	from := fs.String("from", "", "first UTC day, YYYY-MM-DD (inclusive)")
	to := fs.String("to", "", "last UTC day, YYYY-MM-DD (inclusive)")
	tgt := addTargetFlags(fs)
	if code, ok := parseBeaconFlags(env, fs, tgt, args); !ok {
		return code
	}
	f, err := beacon.FilterFromQuery(func(k string) string {
		return map[string]string{"tenant": *tenant, "campaign": *campaign, "from": *from, "to": *to}[k]
	})
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay beacon stats: %v\n", err)
		return 1
	}
	var stats []beacon.Stat
	if *tgt.server != "" {
		c, ok := tgt.client(env, "stats")
		if !ok {
			return 1
		}
		if stats, err = c.Stats(context.Background(), f); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay beacon stats: %v\n", err)
			return 1
		}
	} else {
		st, err := openBeaconDB(env, *tgt.db, dbRead)
		if err != nil {
			return failDB(env, "stats", err)
		}
		stats, err = beacon.ReadStats(st.DB(), f)
		st.Close()
		if err != nil {
			return failDB(env, "stats", err)
		}
	}
	if *asJSON {
		if stats == nil {
			stats = []beacon.Stat{}
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetEscapeHTML(false)
		enc.Encode(stats)
		return 0
	}
	printStatsTable(env.stdout, stats)
	return 0
}

// printStatsTable prints the figures with their honest labels. Numbers are
// right-aligned so columns of counts compare at a glance.
func printStatsTable(w io.Writer, stats []beacon.Stat) {
	if len(stats) == 0 {
		fmt.Fprintln(w, "no beacon statistics match")
		return
	}
	head := []string{"TENANT", "DAY", "CAMPAIGN", "RECIPIENTS", "WITH BEACON", "IMAGE LOADS"}
	rows := [][]string{head}
	var totR, totB, totL uint64
	for _, s := range stats {
		rows = append(rows, []string{s.Tenant, s.Day, s.Campaign,
			fmt.Sprint(s.Recipients), fmt.Sprint(s.BeaconRecipients), fmt.Sprint(s.Loads)})
		totR, totB, totL = totR+s.Recipients, totB+s.BeaconRecipients, totL+s.Loads
	}
	if len(stats) > 1 {
		rows = append(rows, []string{"total", "", "", fmt.Sprint(totR), fmt.Sprint(totB), fmt.Sprint(totL)})
	}
	width := make([]int, len(head))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var sb strings.Builder
		for i, c := range r {
			if i > 0 {
				sb.WriteString("  ")
			}
			if i >= 3 {
				fmt.Fprintf(&sb, "%*s", width[i], c)
			} else {
				fmt.Fprintf(&sb, "%-*s", width[i], c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "IMAGE LOADS are image loads, including privacy proxies such as Apple Mail Privacy Protection,")
	fmt.Fprintln(w, "which fetch images when mail arrives; a load is not an open and does not stand for a person.")
	fmt.Fprintln(w, "RECIPIENTS counts non-consenting recipients that day; WITH BEACON, those sent after the")
	fmt.Fprintln(w, "campaign reached the minimum batch.")
}

func runBeaconKeys(env *cmdEnv, args []string) int {
	fs := newFlagSet("keys", beaconUsage, env.stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	tgt := addTargetFlags(fs)
	if code, ok := parseBeaconFlags(env, fs, tgt, args); !ok {
		return code
	}
	var keys []beacon.KeyInfo
	var err error
	if *tgt.server != "" {
		c, ok := tgt.client(env, "keys")
		if !ok {
			return 1
		}
		if keys, err = c.Keys(context.Background()); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay beacon keys: %v\n", err)
			return 1
		}
	} else {
		st, err := openBeaconDB(env, *tgt.db, dbRead)
		if err != nil {
			return failDB(env, "keys", err)
		}
		keys, err = beacon.ListKeys(st.DB())
		st.Close()
		if err != nil {
			return failDB(env, "keys", err)
		}
	}
	if *asJSON {
		if keys == nil {
			keys = []beacon.KeyInfo{}
		}
		json.NewEncoder(env.stdout).Encode(keys)
		return 0
	}
	if len(keys) == 0 {
		fmt.Fprintln(env.stdout, "no beacon signing key yet; the server creates one on first use")
		return 0
	}
	fmt.Fprintf(env.stdout, "%-6s  %-20s  %-20s  %s\n", "ID", "CREATED", "RETIRED", "STATUS")
	for _, k := range keys {
		retired, status := "-", "signs and verifies"
		if k.Retired != nil {
			retired, status = k.Retired.UTC().Format(time.RFC3339), "verifies tokens it signed until they expire"
		}
		fmt.Fprintf(env.stdout, "%-6d  %-20s  %-20s  %s\n", k.ID, k.Created.UTC().Format(time.RFC3339), retired, status)
	}
	return 0
}

func runBeaconRotate(env *cmdEnv, args []string) int {
	fs := newFlagSet("rotate-key", beaconUsage, env.stderr)
	revoke := fs.Bool("revoke-old", false, "delete every other key now (for a leaked key): beacons already sent stop counting")
	tgt := addTargetFlags(fs)
	if code, ok := parseBeaconFlags(env, fs, tgt, args); !ok {
		return code
	}
	var ki beacon.KeyInfo
	var err error
	if *tgt.server != "" {
		c, ok := tgt.client(env, "rotate-key")
		if !ok {
			return 1
		}
		if ki, err = c.RotateKey(context.Background(), *revoke); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay beacon rotate-key: %v\n", err)
			return 1
		}
	} else {
		st, err := openBeaconDB(env, *tgt.db, dbWrite)
		if err != nil {
			return failDB(env, "rotate-key", err)
		}
		ki, err = beacon.RotateKey(st.DB(), beacon.RotateOptions{RevokeOld: *revoke})
		if cerr := st.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", *tgt.db, cerr)
		}
		if err != nil {
			return failDB(env, "rotate-key", err)
		}
	}
	if *revoke {
		fmt.Fprintf(env.stdout, "key %d signs from now on; every older key is deleted, so beacons sent before now no longer count\n", ki.ID)
	} else {
		fmt.Fprintf(env.stdout, "key %d signs from now on; older keys keep verifying the beacons they signed until those expire\n", ki.ID)
	}
	return 0
}

// beaconDecider is the small-batch guard as `rewrite --action beacon` and
// the relay need it; *beacon.Beacons (local database) and *beacon.Client
// (--server) both provide it.
type beaconDecider interface {
	Decide(tenant, campaign string, recipients int, now time.Time) (url string, ok bool, err error)
}

// newBeaconDecider returns the guard for `rewrite --action beacon`: through
// the server's API when server is set (base, if set, replaces the server's
// beacon base in the URL), else from db, which the caller opened writable.
// done flushes the recipient count to db; call it before exiting.
//
// TODO(integrator): wire into `rewrite --action beacon` (and add
// --beacon-min-batch there if wanted; 0 means the default of 50).
func newBeaconDecider(env *cmdEnv, db *bbolt.DB, server, base string, minBatch int) (d beaconDecider, done func() error, err error) {
	if server != "" {
		token := env.getenv("PIXELRELAY_API_TOKEN")
		if token == "" {
			return nil, nil, errors.New("--server needs the admin API token in PIXELRELAY_API_TOKEN")
		}
		return &beacon.Client{Server: server, Token: token, Base: base}, func() error { return nil }, nil
	}
	if db == nil {
		return nil, nil, errors.New("--action beacon needs --db FILE or --server URL for the signing key and the batch counter")
	}
	b, err := beacon.Open(db, beacon.Options{Base: base, MinBatch: minBatch})
	if err != nil {
		return nil, nil, err
	}
	return b, b.Close, nil
}
