package relay

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
)

// live is the part of the configuration that SIGHUP may change under
// running sessions. Each transaction reads it once, so a message is
// decided under one consistent configuration.
type live struct {
	cfg   Config
	allow []netip.Prefix
	dkim  map[string]*dkimSigner // by From domain
}

// reloadable names the keys a running relay can take without a restart.
// Everything else (listeners, upstream, database, the go-smtp limits fixed
// when a listener starts) needs one, and Apply says which.
var reloadable = map[string]bool{
	"dry_run": true, "action": true, "audit_plaintext": true, "campaign_headers": true,
	"allow_net": true, "tenants": true, "dkim": true, "dkim_existing": true,
	"idle_timeout": true, "command_timeout": true, "data_timeout": true, "drain_timeout": true,
	"users": true, "tls_cert": true, "tls_key": true, "rules": true, "log_level": true,
	"auth_max_failures": true,
}

func newLive(cfg Config) (*live, error) {
	allow, err := ParseNets(cfg.AllowNet)
	if err != nil {
		return nil, err
	}
	dk, err := loadDKIMKeys(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	return &live{cfg: cfg, allow: allow, dkim: dk}, nil
}

// conf is the configuration in force now.
func (r *Relay) conf() *live { return r.live.Load() }

// Apply installs a new configuration, as SIGHUP does. It is all or
// nothing: an invalid configuration changes nothing. Keys that need a
// restart keep their running values, and their names are returned so the
// operator is told.
func (r *Relay) Apply(cfg Config) (needRestart []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cur := r.conf().cfg
	merged := cfg
	mv := reflect.ValueOf(&merged).Elem()
	cv := reflect.ValueOf(cur)
	t := mv.Type()
	for i := 0; i < t.NumField(); i++ {
		name := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if reloadable[name] {
			continue
		}
		if !reflect.DeepEqual(mv.Field(i).Interface(), cv.Field(i).Interface()) {
			needRestart = append(needRestart, name)
			mv.Field(i).Set(cv.Field(i))
		}
	}
	l, err := newLive(merged)
	if err != nil {
		return nil, err
	}
	if (merged.TLSCert == "") != (cur.TLSCert == "") {
		return nil, fmt.Errorf("tls_cert: turning TLS on or off needs a restart")
	}
	if (merged.Users == "") != (cur.Users == "") {
		return nil, fmt.Errorf("users: turning AUTH on or off needs a restart")
	}
	if err := r.reloadFiles(merged); err != nil {
		return nil, err
	}
	r.live.Store(l)
	return needRestart, nil
}

// Config is the configuration in force now, reloads included.
func (r *Relay) Config() Config { return r.conf().cfg }
