package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pixelrelay/pixelrelay/consent"
)

// This file is the one way a command reaches the database: the file given
// by --db (default ./pixelrelay.db), or a running server's admin API given
// by --server, with the token from PIXELRELAY_API_TOKEN. bbolt locks the
// file, so while serve runs every --db command fails at once with the
// message CONTRACTS.md pins, and never hangs.
//
// The consent store's settings must match serve's, or a grant made here
// would be keyed differently from the relay's lookups: the declared
// purposes and ignore_plus_tag are read the way serve reads them (flag,
// then PIXELRELAY_* variable, then the --config YAML file).

// defaultDBPath is --db's default.
const defaultDBPath = "./pixelrelay.db"

// storeFlags are the flags of a command that reaches the database.
type storeFlags struct {
	fs            *flag.FlagSet
	db            string
	server        string
	config        string
	purposes      stringList
	ignorePlusTag bool
}

// addStoreFlags registers --db, --server, --config, --purpose-declare and
// --ignore-plus-tag on fs.
func addStoreFlags(fs *flag.FlagSet) *storeFlags {
	f := &storeFlags{fs: fs}
	fs.StringVar(&f.db, "db", defaultDBPath, "database file (or PIXELRELAY_DB)")
	fs.StringVar(&f.server, "server", "", "URL of a running pixelrelay's admin API, instead of --db; the token comes from PIXELRELAY_API_TOKEN")
	fs.StringVar(&f.config, "config", "", "serve's YAML configuration, for db, purposes and ignore_plus_tag (or PIXELRELAY_CONFIG)")
	fs.Var(&f.purposes, "declare-purpose", "declare a purpose beyond the built-in ones, as serve's purposes setting does (repeatable; or PIXELRELAY_PURPOSES)")
	fs.BoolVar(&f.ignorePlusTag, "ignore-plus-tag", false, "treat bob+tag@ as bob@, as serve's ignore_plus_tag does (or PIXELRELAY_IGNORE_PLUS_TAG)")
	return f
}

// storeTarget is where a command goes once flags, environment and config
// are resolved: Server set means the API, otherwise the file at Path.
type storeTarget struct {
	Path   string
	Server string
	Token  string
	Opts   consent.Options
	// Named is set when the database was named (--db, --server,
	// PIXELRELAY_DB, PIXELRELAY_SERVER or the config file's db) rather
	// than left at ./pixelrelay.db; a command for which the store is
	// optional can use it to tell "use the store" from "no store".
	Named bool
}

// storeConfig is the part of serve's YAML configuration the store needs.
// Unknown keys are serve's business and are ignored here.
type storeConfig struct {
	DB            string   `yaml:"db"`
	Purposes      []string `yaml:"purposes"`
	IgnorePlusTag *bool    `yaml:"ignore_plus_tag"`
}

// resolve applies precedence (flag, then environment, then config file,
// then default) and checks that the combination makes sense.
func (f *storeFlags) resolve(env *cmdEnv) (storeTarget, error) {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["db"] && set["server"] {
		return storeTarget{}, errors.New("give --db or --server, not both")
	}

	var cfg storeConfig
	path := f.config
	if path == "" {
		path = env.getenv("PIXELRELAY_CONFIG")
	}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return storeTarget{}, fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(data, &cfg); err != nil {
			return storeTarget{}, fmt.Errorf("config file %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
		}
	}

	t := storeTarget{Path: f.db, Server: f.server, Named: set["db"] || set["server"]}
	if !set["db"] {
		switch {
		case env.getenv("PIXELRELAY_DB") != "":
			t.Path, t.Named = env.getenv("PIXELRELAY_DB"), true
		case cfg.DB != "":
			t.Path, t.Named = cfg.DB, true
		}
	}
	if !set["server"] && !set["db"] && env.getenv("PIXELRELAY_SERVER") != "" {
		t.Server, t.Named = env.getenv("PIXELRELAY_SERVER"), true
	}

	switch {
	case set["declare-purpose"]:
		t.Opts.Purposes = f.purposes
	case env.getenv("PIXELRELAY_PURPOSES") != "":
		for _, p := range strings.Split(env.getenv("PIXELRELAY_PURPOSES"), ",") {
			if p = strings.TrimSpace(p); p != "" {
				t.Opts.Purposes = append(t.Opts.Purposes, p)
			}
		}
	default:
		t.Opts.Purposes = cfg.Purposes
	}
	switch v := env.getenv("PIXELRELAY_IGNORE_PLUS_TAG"); {
	case set["ignore-plus-tag"]:
		t.Opts.IgnorePlusTag = f.ignorePlusTag
	case v != "":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return storeTarget{}, fmt.Errorf("PIXELRELAY_IGNORE_PLUS_TAG=%q is not true or false", v)
		}
		t.Opts.IgnorePlusTag = b
	case cfg.IgnorePlusTag != nil:
		t.Opts.IgnorePlusTag = *cfg.IgnorePlusTag
	}

	if t.Server != "" {
		t.Token = env.getenv("PIXELRELAY_API_TOKEN")
		if t.Token == "" {
			return storeTarget{}, errors.New("--server needs the admin API token in PIXELRELAY_API_TOKEN (the token serve was started with, --api-token)")
		}
	}
	return t, nil
}

// Remote reports whether the command goes through the server's API.
func (t storeTarget) Remote() bool { return t.Server != "" }

// Client is the API client for a remote target.
func (t storeTarget) Client() *consent.Client { return consent.NewClient(t.Server, t.Token) }

// dbAccess is how a command opens a local database file.
type dbAccess int

const (
	// dbRead shares the lock with other readers; the file must exist.
	dbRead dbAccess = iota
	// dbWrite needs the file to exist: erasing from, or rotating the keys
	// of, a database that a mistyped --db just created would report
	// success while the real one is untouched.
	dbWrite
	// dbCreate creates the file when absent and says so on stderr.
	dbCreate
)

// openStore opens the file of a local target.
func openStore(env *cmdEnv, t storeTarget, access dbAccess) (*consent.Store, error) {
	_, statErr := os.Stat(t.Path)
	if access == dbWrite && errors.Is(statErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("database %s does not exist; check --db, or use --server URL to reach a running pixelrelay", t.Path)
	}
	opts := t.Opts
	opts.ReadOnly = access == dbRead
	s, err := consent.Open(t.Path, opts)
	if err != nil {
		return nil, err
	}
	if access == dbCreate && errors.Is(statErr, fs.ErrNotExist) {
		fmt.Fprintf(env.stderr, "pixelrelay: created a new database %s\n", t.Path)
	}
	return s, nil
}

// failDBErr prints err for command cmd and returns exit code 1. The in-use
// message is printed exactly as CONTRACTS.md pins it, with nothing added,
// so that scripts can match it.
func failDBErr(w io.Writer, cmd string, err error) int {
	if errors.Is(err, consent.ErrInUse) {
		fmt.Fprintln(w, err)
		return 1
	}
	fmt.Fprintf(w, "pixelrelay %s: %v\n", cmd, err)
	return 1
}

// cliActor names the person running the CLI in the events it records.
func cliActor(env *cmdEnv) string {
	name := ""
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	} else if v := env.getenv("USER"); v != "" {
		name = v
	} else {
		name = "uid-" + strconv.Itoa(os.Getuid())
	}
	if sudo := env.getenv("SUDO_USER"); sudo != "" && sudo != name {
		name = sudo + "-via-sudo"
	}
	return "cli:" + name
}
