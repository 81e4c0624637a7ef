package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is everything `pixelrelay serve` can be told. It is a plain struct:
// defaults come from DefaultConfig, the YAML file, PIXELRELAY_* variables and
// flags are layered on top by the caller, and Validate checks the result once
// at startup. The yaml tag is the single name of each key: the flag is the
// same name with '-' for '_', the environment variable PIXELRELAY_ plus the
// name in upper case. The doc tag is the help text.
type Config struct {
	Listen     Addrs  `yaml:"listen" doc:"plain SMTP listener, with STARTTLS when a certificate is set"`
	ListenTLS  Addrs  `yaml:"listen_tls" doc:"implicit-TLS SMTP listener (port 465 style)"`
	ListenLMTP Addrs  `yaml:"listen_lmtp" doc:"LMTP listener, for use as a Postfix content filter"`
	TLSCert    string `yaml:"tls_cert" doc:"PEM certificate chain for the SMTP listeners"`
	TLSKey     string `yaml:"tls_key" doc:"PEM private key for --tls-cert"`
	Hostname   string `yaml:"hostname" doc:"name in the greeting and the Received: header (default: the host name)"`

	Upstream               string        `yaml:"upstream" doc:"smtp://, starttls:// or smtps:// URL of the next hop, with optional user:pass@; empty writes to the outbox directory" secret:"userinfo"`
	UpstreamCA             string        `yaml:"upstream_ca" doc:"PEM file of CA certificates trusted for the upstream (default: the system roots)"`
	UpstreamServerName     string        `yaml:"upstream_server_name" doc:"TLS server name to verify for the upstream (default: the URL's host)"`
	UpstreamPoolSize       int           `yaml:"upstream_pool_size" doc:"idle upstream connections kept for reuse"`
	UpstreamConnectTimeout time.Duration `yaml:"upstream_connect_timeout" doc:"time allowed to connect and greet the upstream"`
	UpstreamCommandTimeout time.Duration `yaml:"upstream_command_timeout" doc:"time allowed for each upstream command reply"`
	UpstreamDataTimeout    time.Duration `yaml:"upstream_data_timeout" doc:"time allowed to send a message and get the upstream's final reply"`
	UpstreamChunking       bool          `yaml:"upstream_chunking" doc:"send messages with BDAT when the upstream offers CHUNKING; false: always DATA"`
	Outbox                 string        `yaml:"outbox" doc:"directory that receives .eml files when no upstream is set"`

	DB string `yaml:"db" doc:"bbolt database file (consent, keys, retry memory, beacon counters)"`

	HTTP         string `yaml:"http" doc:"admin API, metrics and health listener"`
	BeaconListen string `yaml:"beacon_listen" doc:"public listener that serves only /b/ beacons"`
	BeaconBase   string `yaml:"beacon_base" doc:"public URL of the beacon listener, as recipients' mail clients reach it"`

	Action          string        `yaml:"action" doc:"what non-consenting recipients get: strip or beacon"`
	BeaconMinBatch  int           `yaml:"beacon_min_batch" doc:"non-consenting recipients a campaign needs per day before it gets beacons"`
	BeaconMaxAge    time.Duration `yaml:"beacon_max_age" doc:"how long a beacon URL keeps counting after its day"`
	CampaignHeaders []string      `yaml:"campaign_headers" doc:"headers naming a message's campaign, first present wins; fallback: the sender domain"`
	DryRun          bool          `yaml:"dry_run" doc:"forward every message unchanged and only record what would have been stripped"`

	AuditLog       string `yaml:"audit_log" doc:"append-only JSON-lines audit log file, or - for stdout"`
	AuditPlaintext bool   `yaml:"audit_plaintext" doc:"also write plaintext recipient addresses into the audit log"`

	AllowNet          []string `yaml:"allow_net" doc:"source networks allowed to send without AUTH (repeatable CIDR)"`
	Users             string   `yaml:"users" doc:"file of AUTH users with bcrypt hashes: NAME HASH [SENDER,@DOMAIN,…] per line"`
	AllowInsecureAuth bool     `yaml:"allow_insecure_auth" doc:"offer AUTH without TLS; only allowed when every SMTP listener is on loopback"`
	AuthMaxFailures   int      `yaml:"auth_max_failures" doc:"failed AUTH attempts from one address before it gets 421 and is cut off for 15 minutes"`
	APIToken          string   `yaml:"api_token" doc:"bearer token for the admin API; without one the consent API is off" secret:"all"`

	MaxMessageBytes     int64         `yaml:"max_message_bytes" doc:"largest message accepted, in bytes"`
	MaxRecipients       int           `yaml:"max_recipients" doc:"most recipients accepted in one transaction"`
	MaxConnections      int           `yaml:"max_connections" doc:"most concurrent SMTP connections"`
	MaxConnectionsPerIP int           `yaml:"max_connections_per_ip" doc:"most concurrent SMTP connections from one address"`
	MaxHeaderBytes      int           `yaml:"max_header_bytes" doc:"largest message header accepted, in bytes"`
	MaxLineLength       int           `yaml:"max_line_length" doc:"longest command or message line accepted, in bytes"`
	IdleTimeout         time.Duration `yaml:"idle_timeout" doc:"how long a client may wait between transactions"`
	CommandTimeout      time.Duration `yaml:"command_timeout" doc:"how long a client may take to send the next command inside a transaction"`
	DataTimeout         time.Duration `yaml:"data_timeout" doc:"how long a client may take to send a whole message"`
	DrainTimeout        time.Duration `yaml:"drain_timeout" doc:"on SIGTERM, how long transactions in flight may take to finish"`

	MaxProcs int `yaml:"max_procs" doc:"CPUs pixelrelay runs Go code on at once (GOMAXPROCS); 0: Go's default, every CPU. Beside Postfix, 1 is faster"`

	SpoolMemory int64         `yaml:"spool_memory" doc:"message size held in memory; larger messages are spilled to a temporary file"`
	SpoolDir    string        `yaml:"spool_dir" doc:"directory for spilled messages (default: the system temporary directory)"`
	RetryMemory time.Duration `yaml:"retry_memory" doc:"how long the relay remembers which recipients of a partly failed message were already delivered"`

	Rules     string `yaml:"rules" doc:"file of extra tracker rules"`
	Pprof     bool   `yaml:"pprof" doc:"serve Go's /debug/pprof/ profiles on the admin API, behind the token"`
	LogFormat string `yaml:"log_format" doc:"text or json"`
	LogLevel  string `yaml:"log_level" doc:"debug, info, warn or error"`

	DKIM         []DKIMKey `yaml:"dkim" doc:"keys to sign with after the rewrite: a list of {domain, selector, key_file}, picked by the From domain (config file only)"`
	DKIMExisting string    `yaml:"dkim_existing" doc:"a DKIM-Signature on a copy whose body the relay changed is now invalid: remove it, or keep it"`

	Purposes      []string `yaml:"purposes" doc:"consent purposes declared beyond open_tracking and click_tracking"`
	IgnorePlusTag bool     `yaml:"ignore_plus_tag" doc:"consent lookups ignore a +tag in the local part"`

	// Tenants maps a message to the controller whose consent applies. It is
	// only settable from the config file.
	Tenants TenantMap `yaml:"tenants" doc:"maps AUTH users and sender domains to tenants (config file only)"`
}

// Addrs is a listener key: one HOST:PORT, or several (submission on 587
// and 25 side by side, a second loopback port for a content filter). In
// YAML it is a string or a list; as a flag it repeats.
type Addrs []string

// UnmarshalYAML accepts a single address as well as a list.
func (a *Addrs) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value == "" {
			*a = nil
		} else {
			*a = Addrs{n.Value}
		}
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	*a = list
	return nil
}

// TenantMap chooses the tenant of a message: the AUTH user first, then the
// envelope sender's domain, then "default". Consent given to one controller
// must never enable tracking in another controller's mail.
type TenantMap struct {
	Users         map[string]string `yaml:"users"`
	SenderDomains map[string]string `yaml:"sender_domains"`
}

// DefaultConfig is what `go run ./cmd/pixelrelay serve` runs with: loopback
// listeners, the outbox directory instead of an upstream, and strip.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return Config{
		Listen:                 Addrs{"127.0.0.1:2525"},
		Hostname:               host,
		UpstreamPoolSize:       16,
		UpstreamConnectTimeout: 15 * time.Second,
		UpstreamCommandTimeout: 60 * time.Second,
		UpstreamDataTimeout:    5 * time.Minute,
		UpstreamChunking:       true,
		Outbox:                 "outbox",
		DB:                     "pixelrelay.db",
		HTTP:                   "127.0.0.1:8025",
		Action:                 "strip",
		BeaconMinBatch:         50,
		BeaconMaxAge:           90 * 24 * time.Hour,
		CampaignHeaders:        []string{"X-Campaign-Id", "List-Id", "X-Mailgun-Campaign-Id", "X-SES-CONFIGURATION-SET"},
		AuditLog:               "audit.jsonl",
		AllowNet:               []string{"127.0.0.0/8", "::1/128"},
		AuthMaxFailures:        5,
		MaxMessageBytes:        25 << 20,
		MaxRecipients:          1000,
		MaxConnections:         200,
		MaxConnectionsPerIP:    50,
		MaxHeaderBytes:         1 << 20,
		MaxLineLength:          8192,
		IdleTimeout:            5 * time.Minute,
		CommandTimeout:         5 * time.Minute,
		DataTimeout:            10 * time.Minute,
		DrainTimeout:           30 * time.Second,
		SpoolMemory:            4 << 20,
		RetryMemory:            24 * time.Hour,
		DKIMExisting:           "remove",
		LogFormat:              "text",
		LogLevel:               "info",
	}
}

// Validate reports every problem at once, each naming its key, so an
// operator fixes a config file in one round instead of one error per start.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, v string, required bool) {
		if v == "" {
			if required {
				bad(key, "is required")
			}
			return
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(key, "%q is not HOST:PORT (%v)", v, err)
		}
	}
	checkAddrs := func(key string, list Addrs) {
		for _, v := range list {
			checkAddr(key, v, false)
		}
	}
	checkFile := func(key, v string) {
		if v == "" {
			return
		}
		if _, err := os.Stat(v); err != nil {
			bad(key, "cannot read %q: %v", v, err)
		}
	}

	if len(c.Listen)+len(c.ListenTLS)+len(c.ListenLMTP) == 0 {
		bad("listen", "no listener: set listen, listen_tls or listen_lmtp")
	}
	checkAddrs("listen", c.Listen)
	checkAddrs("listen_tls", c.ListenTLS)
	checkAddrs("listen_lmtp", c.ListenLMTP)
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls_cert", "tls_cert and tls_key must be set together")
	}
	if len(c.ListenTLS) > 0 && c.TLSCert == "" {
		bad("listen_tls", "needs tls_cert and tls_key")
	}
	checkFile("tls_cert", c.TLSCert)
	checkFile("tls_key", c.TLSKey)
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		bad("hostname", "%q is not a host name", c.Hostname)
	}

	if c.Upstream != "" {
		if _, err := ParseUpstreamURL(c.Upstream); err != nil {
			bad("upstream", "%v", err)
		}
	} else if c.Outbox == "" {
		bad("outbox", "is required when no upstream is set")
	}
	checkFile("upstream_ca", c.UpstreamCA)
	if c.UpstreamPoolSize < 0 {
		bad("upstream_pool_size", "must not be negative")
	}
	for key, d := range map[string]time.Duration{
		"upstream_connect_timeout": c.UpstreamConnectTimeout,
		"upstream_command_timeout": c.UpstreamCommandTimeout,
		"upstream_data_timeout":    c.UpstreamDataTimeout,
		"retry_memory":             c.RetryMemory,
		"idle_timeout":             c.IdleTimeout,
		"command_timeout":          c.CommandTimeout,
		"data_timeout":             c.DataTimeout,
		"drain_timeout":            c.DrainTimeout,
	} {
		if d <= 0 {
			bad(key, "must be a positive duration such as 30s")
		}
	}

	if c.DB == "" {
		bad("db", "is required")
	}
	checkAddr("http", c.HTTP, false)
	checkAddr("beacon_listen", c.BeaconListen, false)

	switch c.Action {
	case "strip":
	case "beacon":
		if c.BeaconBase == "" {
			bad("beacon_base", "is required with action: beacon")
		}
	default:
		bad("action", "%q is not strip or beacon", c.Action)
	}
	if c.BeaconBase != "" {
		u, err := url.Parse(c.BeaconBase)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("beacon_base", "%q is not an http(s) URL", c.BeaconBase)
		}
	}
	if c.BeaconMinBatch < 1 {
		bad("beacon_min_batch", "must be at least 1")
	}
	if c.BeaconMaxAge < 24*time.Hour {
		bad("beacon_max_age", "must be at least a day (24h); a beacon carries a day, not a time")
	}
	if c.BeaconListen != "" && c.BeaconBase == "" {
		bad("beacon_base", "is required with beacon_listen: it is the public URL recipients' mail clients use to reach that listener")
	}
	for _, h := range c.CampaignHeaders {
		if h == "" || strings.ContainsAny(h, " :\t") {
			bad("campaign_headers", "%q is not a header name", h)
		}
	}

	if c.AuditLog == "" {
		bad("audit_log", "is required (a file, or - for stdout)")
	} else if c.AuditLog != "-" {
		if dir := filepath.Dir(c.AuditLog); dir != "" {
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				bad("audit_log", "directory %q does not exist", dir)
			}
		}
	}

	if _, err := ParseNets(c.AllowNet); err != nil {
		bad("allow_net", "%v", err)
	}
	checkFile("users", c.Users)
	if c.AllowInsecureAuth {
		for key, list := range map[string]Addrs{"listen": c.Listen, "listen_lmtp": c.ListenLMTP} {
			for _, addr := range list {
				if !isLoopbackListen(addr) {
					bad("allow_insecure_auth", "%s %s is not a loopback address; AUTH without TLS would send passwords in clear over the network", key, addr)
				}
			}
		}
	}
	if c.AuthMaxFailures < 1 {
		bad("auth_max_failures", "must be at least 1")
	}

	if c.MaxMessageBytes < 1024 {
		bad("max_message_bytes", "must be at least 1024")
	}
	if c.MaxRecipients < 1 {
		bad("max_recipients", "must be at least 1")
	}
	if c.MaxProcs < 0 {
		bad("max_procs", "must be 0 (every CPU) or more, not %d", c.MaxProcs)
	}
	if c.MaxConnections < 1 {
		bad("max_connections", "must be at least 1")
	}
	if c.MaxConnectionsPerIP < 1 {
		bad("max_connections_per_ip", "must be at least 1")
	}
	if c.MaxHeaderBytes < 1024 {
		bad("max_header_bytes", "must be at least 1024")
	}
	if c.MaxLineLength < 1000 {
		bad("max_line_length", "must be at least 1000 (RFC 5321 allows lines of 1000 bytes)")
	}
	if c.SpoolMemory < 0 {
		bad("spool_memory", "must not be negative")
	}
	if c.SpoolDir != "" {
		if st, err := os.Stat(c.SpoolDir); err != nil || !st.IsDir() {
			bad("spool_dir", "%q is not a directory", c.SpoolDir)
		}
	}

	switch c.DKIMExisting {
	case "remove", "keep":
	default:
		bad("dkim_existing", "%q is not remove or keep", c.DKIMExisting)
	}
	if _, err := loadDKIMKeys(c.DKIM); err != nil {
		bad("dkim", "%v", err)
	}
	checkFile("rules", c.Rules)
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format", "%q is not text or json", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	for _, p := range c.Purposes {
		if p == "" || strings.ContainsAny(p, " \t,/") {
			bad("purposes", "%q is not a purpose name (letters, digits, _ and -)", p)
		}
	}
	for u, t := range c.Tenants.Users {
		if t == "" {
			bad("tenants.users", "user %q maps to an empty tenant", u)
		}
	}
	for d, t := range c.Tenants.SenderDomains {
		if t == "" {
			bad("tenants.sender_domains", "domain %q maps to an empty tenant", d)
		}
	}
	return errors.Join(errs...)
}

// ParseNets parses CIDR strings; a bare address is taken as a single host.
func ParseNets(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, s := range list {
		for _, part := range strings.Split(s, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if p, err := netip.ParsePrefix(part); err == nil {
				out = append(out, p.Masked())
				continue
			}
			if a, err := netip.ParseAddr(part); err == nil {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
			errs = append(errs, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", part))
		}
	}
	return out, errors.Join(errs...)
}

// isLoopbackListen tells whether a listen address can only be reached from
// this host.
func isLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
