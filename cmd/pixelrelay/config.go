package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pixelrelay/pixelrelay/relay"
)

// configLoader layers serve's configuration: defaults, then the YAML file,
// then PIXELRELAY_* variables, then flags. Every key is declared once, as a
// yaml-tagged field of relay.Config; flags and variables are derived from
// it, so they cannot drift apart. The loader keeps the flags and
// environment it was started with, so SIGHUP can re-read the file and
// layer them again.
type configLoader struct {
	flagValues map[string][]string // key -> values given on the command line
	getenv     func(string) string
	configPath string
}

// configKey describes one settable field.
type configKey struct {
	name  string // yaml name, e.g. beacon_min_batch
	index []int
	kind  reflect.Type
	doc   string
}

var durationType = reflect.TypeOf(time.Duration(0))

// configKeys lists the settable scalar and list keys of relay.Config.
func configKeys() []configKey {
	t := reflect.TypeOf(relay.Config{})
	var keys []configKey
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		switch f.Type.Kind() {
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Slice:
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() != reflect.String {
				continue
			}
			keys = append(keys, configKey{name: name, index: f.Index, kind: f.Type, doc: f.Tag.Get("doc")})
		}
	}
	return keys
}

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }
func envName(key string) string  { return "PIXELRELAY_" + strings.ToUpper(key) }

// recordingValue is a flag.Value that only records what was given.
type recordingValue struct {
	key    string
	isBool bool
	into   map[string][]string
}

func (v *recordingValue) String() string { return "" }
func (v *recordingValue) Set(s string) error {
	v.into[v.key] = append(v.into[v.key], s)
	return nil
}
func (v *recordingValue) IsBoolFlag() bool { return v.isBool }

// registerServeFlags adds one flag per config key, plus --config.
func (l *configLoader) registerServeFlags(fs *flag.FlagSet) {
	l.flagValues = map[string][]string{}
	fs.StringVar(&l.configPath, "config", "", "YAML configuration file (keys as below, with _ for -)")
	def := relay.DefaultConfig()
	dv := reflect.ValueOf(def)
	for _, k := range configKeys() {
		usage := k.doc
		// A description that says what the default is ("the host name")
		// keeps its words: the value of this machine would only mislead.
		if d := dv.FieldByIndex(k.index); !d.IsZero() && !strings.Contains(usage, "(default") {
			usage += fmt.Sprintf(" (default %v)", formatValue(d))
		}
		if k.kind.Kind() == reflect.Slice {
			usage += " [repeatable]"
		}
		fs.Var(&recordingValue{key: k.name, isBool: k.kind.Kind() == reflect.Bool, into: l.flagValues}, flagName(k.name), usage)
	}
}

func formatValue(v reflect.Value) string {
	if v.Kind() == reflect.Slice {
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}

// override is a key that the config file sets and a PIXELRELAY_*
// variable replaces with another value. The order is documented, but the
// variable is easy to miss: the container image sets six of them.
type override struct {
	key, variable, file string
}

// load builds and validates the configuration. Every problem, from every
// layer, is reported in one error, each naming its key and its source. It
// also returns the file's keys that the environment overrides, for serve to
// warn about.
func (l *configLoader) load() (relay.Config, []override, error) {
	cfg := relay.DefaultConfig()
	var errs []error

	path := l.configPath
	if path == "" {
		path = l.getenv("PIXELRELAY_CONFIG")
	}
	var inFile map[string]bool
	if path != "" {
		var err error
		if inFile, err = loadYAML(path, &cfg); err != nil {
			errs = append(errs, err)
		}
	}

	var overrides []override
	v := reflect.ValueOf(&cfg).Elem()
	for _, k := range configKeys() {
		if s := l.getenv(envName(k.name)); s != "" {
			vals := []string{s}
			if k.kind.Kind() == reflect.Slice {
				vals = splitList(s)
			}
			f := v.FieldByIndex(k.index)
			fromFile := f.Interface()
			if err := setField(f, vals); err != nil {
				errs = append(errs, fmt.Errorf("%s (from %s): %v", k.name, envName(k.name), err))
				continue
			}
			_, flagged := l.flagValues[k.name]
			if inFile[k.name] && !flagged && !reflect.DeepEqual(fromFile, f.Interface()) {
				overrides = append(overrides, override{key: k.name, variable: envName(k.name), file: path})
			}
		}
	}
	for _, k := range configKeys() {
		if vals, ok := l.flagValues[k.name]; ok {
			if k.kind.Kind() == reflect.Slice {
				var all []string
				for _, s := range vals {
					all = append(all, splitList(s)...)
				}
				vals = all
			}
			if err := setField(v.FieldByIndex(k.index), vals); err != nil {
				errs = append(errs, fmt.Errorf("%s (from --%s): %v", k.name, flagName(k.name), err))
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	return cfg, overrides, errors.Join(errs...)
}

// warnOverrides logs each config-file key that the environment overrides.
// Values are left out: some are secrets (api_token, upstream).
func warnOverrides(log *slog.Logger, overrides []override) {
	for _, o := range overrides {
		log.Warn("the environment overrides the config file for this key; unset the variable to use the file's value",
			"key", o.key, "variable", o.variable, "config", o.file)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// setField parses vals into f. A scalar takes the last value, as GNU tools
// do when a flag is repeated.
func setField(f reflect.Value, vals []string) error {
	if f.Kind() == reflect.Slice {
		f.Set(reflect.ValueOf(append([]string(nil), vals...)).Convert(f.Type()))
		return nil
	}
	s := vals[len(vals)-1]
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", s)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case f.Kind() == reflect.Int || f.Kind() == reflect.Int64:
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		f.SetInt(n)
	default:
		return fmt.Errorf("cannot be set from text")
	}
	return nil
}

// parseSize accepts plain integers and the K/M/G suffixes operators write
// for sizes (25M).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSpace(s)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult, t = 1<<10, t[:n-1]
		case 'm', 'M':
			mult, t = 1<<20, t[:n-1]
		case 'g', 'G':
			mult, t = 1<<30, t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if errors.Is(err, strconv.ErrRange) || n > math.MaxInt64/mult || n < math.MinInt64/mult {
		// Wrapping around would turn a typo into 0 or a negative size.
		return 0, fmt.Errorf("%q is too large; sizes go up to %dG", s, int64(math.MaxInt64)>>30)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return n * mult, nil
}

// loadYAML reads the config file strictly: an unknown key is an error, as
// a typo that silently does nothing is the worst kind of config bug. It
// returns the keys the file sets.
func loadYAML(path string, cfg *relay.Config) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("config file %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	keys := make(map[string]bool, len(top))
	for k := range top {
		keys[k] = true
	}
	return keys, nil
}

// describeConfig renders the effective configuration for the startup log,
// with secrets masked.
func describeConfig(cfg relay.Config) []any {
	v := reflect.ValueOf(cfg)
	t := v.Type()
	var attrs []any
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" {
			continue
		}
		fv := v.Field(i)
		var shown any
		switch x := fv.Interface().(type) {
		case relay.TenantMap:
			shown = describeTenants(x)
		case []relay.DKIMKey:
			names := make([]string, len(x))
			for i, k := range x {
				names[i] = k.Selector + "._domainkey." + k.Domain
			}
			shown = strings.Join(names, ",")
		default:
			shown = formatValue(fv)
		}
		switch f.Tag.Get("secret") {
		case "all":
			if !fv.IsZero() {
				shown = "*****"
			}
		case "userinfo":
			shown = maskURL(fv.String())
		}
		attrs = append(attrs, name, shown)
	}
	return attrs
}

// describeTenants sums the tenant mapping up: the map itself can be long,
// and it names users.
func describeTenants(m relay.TenantMap) string {
	var parts []string
	if n := len(m.Users); n > 0 {
		parts = append(parts, strconv.Itoa(n)+" "+plural(n, "user", "users"))
	}
	if n := len(m.SenderDomains); n > 0 {
		parts = append(parts, strconv.Itoa(n)+" "+plural(n, "sender domain", "sender domains"))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func maskURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "*****")
	}
	return u.String()
}
