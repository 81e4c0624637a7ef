package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// outcome is the result of acting on a transaction's plan.
type outcome struct {
	// reply is the single SMTP reply; nil means "250 OK".
	reply *smtp.SMTPError
	// perRecipient is the LMTP view: nil error for delivered.
	perRecipient map[*recipient]error
}

// deliver acts on the plan built at RCPT time: one copy per recipient group
// (the original for those who consented, the enforced copy for the rest),
// each handed to its own upstream transaction, then one audit record. It
// never reports success for a recipient the upstream did not accept.
func (r *Relay) deliver(s *session, tx *transaction, msg *message) *outcome {
	ctx := context.Background()
	relayID := newID()
	now := time.Now()
	received := receivedHeader(s.helo, s.remote, r.cfg.Hostname, protocolName(s.lmtp, s.tls, tx.user != ""), relayID, now)
	campaign := CampaignKey(msg.header, tx.conf.cfg.CampaignHeaders, tx.from)
	enforced, beaconURL := r.enforcement(tx, campaign, now)

	var before map[string]bool
	if r.deps.RetryMemory != nil && !r.deps.RetryMemory.Empty() {
		var err error
		if before, err = r.deps.RetryMemory.Delivered(retryKey(tx, msg)); err != nil {
			// Without the memory a retry may duplicate; refusing the
			// retry would lose nothing but delay everything.
			r.log.Error("retry memory unreadable; a retried message may reach some recipients twice", "err", err)
		}
	}

	var (
		report     *rewrite.Report
		problems   []string
		replies    []Reply
		dkimStatus = dkimNone
	)
	for _, g := range []*group{tx.keep, tx.enforce} {
		if len(g.rcpts) == 0 {
			if g.tx != nil {
				g.tx.Abort()
				g.tx = nil
			}
			continue
		}
		pending := g.rcpts[:0:0]
		for _, rc := range g.rcpts {
			if before[rc.pseudonym] {
				rc.before = true
			} else {
				pending = append(pending, rc)
			}
		}
		if len(pending) == 0 {
			// Everyone in the group already has it (a retry); its upstream
			// transaction, if it still has one, carries nothing.
			if g.tx != nil {
				g.tx.Abort()
				g.tx = nil
			}
			continue
		}
		if g.tx == nil || len(pending) < len(g.rcpts) {
			r.reopen(ctx, tx, g, pending)
		}
		if g.tx == nil {
			continue // every pending recipient already has its error
		}
		// The decision names every recipient of the group, retried or not,
		// so that a retry produces the same bytes as the first attempt.
		d := rewrite.Decision{Action: g.action(enforced), Recipients: addrs(g.rcpts)}
		if d.Action == rewrite.Beacon {
			d.BeaconURL = beaconURL
		}
		reply, rep, dk, err := r.send(ctx, tx.conf, g, received, msg, d)
		if errors.Is(err, errNothingSent) {
			// The transaction opened at RCPT went stale while the client
			// uploaded (upstreams drop idle clients after a few minutes).
			// Nothing was sent on it, so a fresh one is safe.
			r.log.Info("upstream connection went idle during the upload; retrying on a new one", upstreamCause(err))
			if r.reopen(ctx, tx, g, pending); g.tx != nil {
				reply, rep, dk, err = r.send(ctx, tx.conf, g, received, msg, d)
			}
		}
		if rep != nil {
			report = rep
		}
		if dkimRank(dk) > dkimRank(dkimStatus) {
			dkimStatus = dk
		}
		switch {
		case err == nil:
			replies = append(replies, reply)
		case isOwnFault(err):
			r.log.Error("could not build a copy for the upstream; answering 451 4.3.0 so the client retries", "err", err)
		default:
			r.upstreamFailed("data", err)
		}
		for _, rc := range pending {
			if rc.status == nil {
				rc.status = err
			}
		}
	}

	if report == nil {
		report = r.detect(tx, msg, enforced)
	}
	problems = append(problems, report.Problems...)

	out := r.settle(s, tx, msg, before != nil, replies)
	r.audit(tx, msg, relayID, campaign, enforced, report, replies, problems, dkimStatus, out)
	return out
}

// reopen replaces a group's upstream transaction by one for the pending
// recipients only: used when a retry finds some of them already delivered,
// or when the transaction broke after RCPT.
func (r *Relay) reopen(ctx context.Context, tx *transaction, g *group, pending []*recipient) {
	if g.tx != nil {
		g.tx.Abort()
		g.tx = nil
	}
	t, err := r.deps.Upstream.Begin(ctx, tx.wireFrom, tx.opts)
	if err != nil {
		r.upstreamFailed("mail", err)
		for _, rc := range pending {
			rc.status = err
		}
		return
	}
	accepted := 0
	for _, rc := range pending {
		if err := t.Rcpt(ctx, rc.wire, rc.opts); err != nil {
			rc.status = err
			continue
		}
		accepted++
	}
	if accepted == 0 {
		t.Abort()
		return
	}
	g.tx = t
}

// send streams one group's copy: our Received: line, then the original or
// the rewritten message. Only when the copy must be complete before it goes
// out is it built first: to sign it with our key (a signature covers the
// whole body), or when the rewrite may break the app's signature, which
// must then be removed from the header.
func (r *Relay) send(ctx context.Context, conf *live, g *group, received []byte, msg *message, d rewrite.Decision) (Reply, *rewrite.Report, string, error) {
	start := time.Now()
	defer func() { r.metrics.upstreamSeconds.Observe(time.Since(start).Seconds()) }()
	signer := conf.dkim[fromDomain(msg.header)]
	hasSig := len(msg.header["Dkim-Signature"]) > 0
	mayRemoveSig := hasSig && d.Action != rewrite.Keep && conf.cfg.DKIMExisting == "remove"
	if signer == nil && !mayRemoveSig {
		status := dkimNone
		if hasSig {
			status = dkimKept
		}
		var report *rewrite.Report
		reply, err := g.tx.Data(ctx, func(w io.Writer) error {
			if _, err := w.Write(received); err != nil {
				return err
			}
			if d.Action == rewrite.Keep {
				// The consenting copy is the client's bytes, untouched.
				_, err := io.Copy(w, msg.Reader())
				return err
			}
			t := time.Now()
			rep, err := r.deps.Rewriter.Rewrite(w, msg.Reader(), d)
			r.metrics.rewriteSeconds.Observe(time.Since(t).Seconds())
			report = &rep
			return err
		})
		g.tx = nil
		return reply, report, status, err
	}

	buf := &copyBuffer{limit: r.cfg.SpoolMemory, dir: r.cfg.SpoolDir}
	defer buf.Close()
	var report *rewrite.Report
	changed := false
	if d.Action == rewrite.Keep {
		if _, err := io.Copy(buf, msg.Reader()); err != nil {
			g.tx.Abort()
			g.tx = nil
			return Reply{}, nil, "", err
		}
	} else {
		t := time.Now()
		rep, err := r.deps.Rewriter.Rewrite(buf, msg.Reader(), d)
		r.metrics.rewriteSeconds.Observe(time.Since(t).Seconds())
		report = &rep
		if err != nil {
			g.tx.Abort()
			g.tx = nil
			return Reply{}, report, "", err
		}
		changed = rep.Changed
	}
	status := dkimNone
	body := func() io.Reader { return buf.Reader() }
	if hasSig {
		status = dkimKept
		if changed && conf.cfg.DKIMExisting == "remove" {
			// The app's signature no longer matches the body; leaving it
			// would make receivers treat the mail as tampered with.
			body = func() io.Reader { return withoutFields(buf.Reader(), "DKIM-Signature") }
			status = dkimRemoved
		}
	}
	var sig string
	if signer != nil {
		var err error
		if sig, err = signer.sign(msg.header, body()); err != nil {
			g.tx.Abort()
			g.tx = nil
			r.log.Error("DKIM signing failed", "domain", signer.domain, "err", err)
			return Reply{}, report, "", err
		}
		status = dkimSigned
	}
	reply, err := g.tx.Data(ctx, func(w io.Writer) error {
		if _, err := io.WriteString(w, sig); err != nil {
			return err
		}
		if _, err := w.Write(received); err != nil {
			return err
		}
		_, err := io.Copy(w, body())
		return err
	})
	g.tx = nil
	return reply, report, status, err
}

// dkimRank orders DKIM outcomes for the one value an audit record holds.
func dkimRank(s string) int {
	switch s {
	case dkimSigned:
		return 3
	case dkimRemoved:
		return 2
	case dkimKept:
		return 1
	}
	return 0
}

// detect runs the rewriter without changing anything, for the audit record
// of a message no enforced copy was made of: all recipients consented, the
// relay is in dry-run, or the enforced group failed before DATA.
func (r *Relay) detect(tx *transaction, msg *message, enforced rewrite.Action) *rewrite.Report {
	d := rewrite.Decision{Action: rewrite.Keep, Recipients: addrs(tx.rcpts)}
	var would []*recipient
	for _, rc := range tx.rcpts {
		if rc.consent != string(consent.Granted) {
			would = append(would, rc)
		}
	}
	if len(would) > 0 {
		// What the non-consenting recipients' copy would have lost. A
		// dry-run beacon is reported against a placeholder URL: the
		// report names the trackers, and no URL is minted or counted.
		d = rewrite.Decision{Action: enforced, Recipients: addrs(would)}
		if enforced == rewrite.Beacon {
			d.BeaconURL = "https://beacon.invalid/b/dry-run.gif"
		}
	}
	rep, err := r.deps.Rewriter.Rewrite(io.Discard, msg.Reader(), d)
	if err != nil {
		r.log.Error("tracker detection for the audit record failed", "err", err)
	}
	return &rep
}

// settle turns per-recipient results into the client's reply. The rules:
// nothing is acknowledged that the upstream did not accept; a temporary
// failure of any recipient makes the client retry, and the retry memory
// keeps that retry from duplicating the copies already delivered; a
// permanent failure next to successes is reported by a DSN, as a queueing
// MTA would.
func (r *Relay) settle(s *session, tx *transaction, msg *message, retried bool, replies []Reply) *outcome {
	var ok, temp, perm []*recipient
	for _, rc := range tx.rcpts {
		switch {
		case rc.status == nil:
			ok = append(ok, rc)
		case isPermanent(rc.status):
			perm = append(perm, rc)
		default:
			temp = append(temp, rc)
		}
	}
	// A retry that delivered is remembered whatever the reply: should our
	// answer be lost on the wire, a further attempt duplicates nothing.
	remember := retried
	out := &outcome{}
	switch {
	case s.lmtp:
		out.perRecipient = make(map[*recipient]error, len(tx.rcpts))
		for _, rc := range tx.rcpts {
			if rc.status != nil {
				out.perRecipient[rc] = upstreamReply(rc.status)
			}
		}
	case len(temp) > 0 && len(ok) > 0:
		remember = true
		r.metrics.partialFailures.WithLabelValues("temporary").Inc()
		r.log.Warn("partial delivery: some recipients deferred; answering 4xx so the client retries the rest",
			"delivered", len(ok), "deferred", len(temp), "refused", len(perm))
		out.reply = errPartial
	case len(temp) > 0:
		out.reply = upstreamReply(temp[0].status)
	case len(perm) > 0 && len(ok) > 0:
		r.metrics.partialFailures.WithLabelValues("permanent").Inc()
		if err := r.sendDSN(tx, msg, wantFailureDSN(perm)); err != nil {
			// The sender must hear of the refused recipients one way or
			// another: without our DSN, the client keeps the message and
			// retries; the delivered recipients are remembered, so only the
			// refused ones are tried again, and in the end the client
			// reports them itself.
			remember = true
			out.reply = errPartial
			break
		}
		out.reply = okReply(replies)
	case len(perm) > 0:
		out.reply = upstreamReply(perm[0].status)
	default:
		out.reply = okReply(replies)
	}
	if remember && len(ok) > 0 && r.deps.RetryMemory != nil {
		if err := r.deps.RetryMemory.Remember(retryKey(tx, msg), pseudonyms(ok)); err != nil {
			r.log.Error("cannot record which recipients have the message; the client's retry may send them a second copy", "err", err)
		}
	}
	return out
}

// okReply is the 250 the client sees, naming the upstream queue ids so that
// an app's log leads straight to the next hop's.
func okReply(replies []Reply) *smtp.SMTPError {
	var ids []string
	for _, rp := range replies {
		if rp.QueueID != "" {
			ids = append(ids, rp.QueueID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return reply(250, smtp.EnhancedCode{2, 0, 0}, "OK: queued as "+strings.Join(ids, ","))
}

func (r *Relay) audit(tx *transaction, msg *message, relayID, campaign string, enforced rewrite.Action, report *rewrite.Report, replies []Reply, problems []string, dkimStatus string, out *outcome) {
	rec := &AuditRecord{
		Time:         time.Now().UTC(),
		MessageID:    strings.TrimSpace(msg.header.Get("Message-Id")),
		Campaign:     campaign,
		Tenant:       tx.tenant,
		RelayVersion: r.deps.Version,
		RulesVersion: r.deps.Rewriter.RulesVersion(),
		SenderDomain: domainOf(tx.from),
		DryRun:       tx.conf.cfg.DryRun,
		DKIM:         dkimStatus,
		DurationMS:   time.Since(tx.start).Milliseconds(),
		RelayID:      relayID,
		Problems:     problems,
	}
	wouldEnforce := string(enforced)
	for _, rc := range tx.rcpts {
		ar := AuditRecipient{Pseudonym: rc.pseudonym, Consent: rc.consent, Action: string(rewrite.Keep)}
		if rc.consent != string(consent.Granted) {
			ar.Action = wouldEnforce
		}
		if tx.conf.cfg.AuditPlaintext {
			ar.Address = rc.addr
		}
		switch {
		case rc.status == nil:
			ar.Status = 250
		default:
			ar.Status = upstreamReply(rc.status).Code
		}
		rec.Recipients = append(rec.Recipients, ar)
	}
	for _, f := range report.Trackers {
		rec.Trackers = append(rec.Trackers, AuditTracker{Vendor: f.Vendor, Host: f.Host, Reasons: f.Reasons, Vector: f.Vector, Action: string(f.Action)})
	}
	if len(replies) > 0 {
		rec.Upstream = replies[len(replies)-1]
	}
	if out.reply != nil && out.reply.Code >= 400 {
		rec.Upstream = Reply{Code: out.reply.Code, Text: out.reply.Message}
	}

	// The outcome comes from the recipients' verdicts, not from the single
	// reply: over LMTP there is none.
	delivered, deferred, refused := 0, 0, 0
	for _, rc := range tx.rcpts {
		switch {
		case rc.status == nil:
			delivered++
		case isPermanent(rc.status):
			refused++
		default:
			deferred++
		}
	}
	var err error
	switch {
	case deferred+refused == 0:
		err = r.deps.Audit.Delivered(rec)
	case delivered > 0:
		err = r.deps.Audit.Partial(rec)
	case deferred == 0:
		err = r.deps.Audit.Refused(rec)
	default:
		err = r.deps.Audit.Deferred(rec)
	}
	if err != nil {
		r.log.Error("cannot write the audit log", "err", err)
	}
	r.metrics.messages.WithLabelValues(rec.Outcome).Inc()
	for _, ar := range rec.Recipients {
		r.metrics.recipients.WithLabelValues(ar.Consent, ar.Action).Inc()
	}
	for _, tr := range rec.Trackers {
		vendor := tr.Vendor
		if vendor == "" {
			vendor = "unknown"
		}
		r.metrics.trackers.WithLabelValues(vendor, tr.Action).Inc()
	}
	r.log.Info("message",
		"relay_id", relayID, "tenant", tx.tenant, "outcome", rec.Outcome,
		"recipients", len(tx.rcpts), "kept", len(tx.keep.rcpts), "enforced", len(tx.enforce.rcpts),
		"trackers", len(rec.Trackers), "dry_run", tx.conf.cfg.DryRun,
		"upstream", rec.Upstream.Code, "queue_id", rec.Upstream.QueueID, "duration_ms", rec.DurationMS)
}

// retryKey identifies "the same message from the same sender", so that a
// client's retry after a partial failure is recognised. The recipients are
// left out on purpose: a retry's envelope may differ from the first
// attempt's (a recipient the upstream defers at RCPT this time is not in
// it), and the memory already answers recipient by recipient, by
// pseudonym.
func retryKey(tx *transaction, msg *message) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", tx.tenant, tx.from)
	h.Write(msg.digest())
	return hex.EncodeToString(h.Sum(nil))
}

func addrs(rcpts []*recipient) []string {
	out := make([]string, len(rcpts))
	for i, rc := range rcpts {
		out[i] = rc.addr
	}
	return out
}

func pseudonyms(rcpts []*recipient) []string {
	out := make([]string, len(rcpts))
	for i, rc := range rcpts {
		out[i] = rc.pseudonym
	}
	return out
}

// CampaignKey names the campaign of a message: the first campaign header
// present, else the envelope sender's domain (the beacon token adds the
// day). It is made safe to put in a token: no control characters, valid
// UTF-8, and a digest in place of an absurdly long value.
func CampaignKey(h textproto.MIMEHeader, names []string, from string) string {
	v := ""
	for _, n := range names {
		if v = strings.TrimSpace(h.Get(n)); v != "" {
			break
		}
	}
	if v == "" {
		v = domainOf(from)
	}
	if v == "" {
		v = "null-sender"
	}
	v = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError {
			return -1
		}
		return r
	}, strings.ToValidUTF8(v, ""))
	if len(v) > 200 {
		sum := sha256.Sum256([]byte(v))
		v = "sha256:" + hex.EncodeToString(sum[:16])
	}
	return v
}

// enforcement is what non-consenting recipients of this message get:
// strip, or with action beacon, a beacon once the campaign has reached the
// minimum batch for the day. Any trouble with beacons strips: that never
// tracks anyone.
func (r *Relay) enforcement(tx *transaction, campaign string, now time.Time) (rewrite.Action, string) {
	if tx.conf.cfg.Action != "beacon" || r.deps.Beacons == nil {
		return rewrite.Strip, ""
	}
	n := 0
	for _, rc := range tx.rcpts {
		if rc.consent != string(consent.Granted) {
			n++
		}
	}
	if n == 0 {
		return rewrite.Strip, ""
	}
	if tx.conf.cfg.DryRun {
		ok, err := r.deps.Beacons.Check(tx.tenant, campaign, n, now)
		if err != nil || !ok {
			return rewrite.Strip, ""
		}
		return rewrite.Beacon, ""
	}
	url, ok, err := r.deps.Beacons.Decide(tx.tenant, campaign, n, now)
	if err != nil {
		r.log.Warn("beacon decision failed; stripping", "tenant", tx.tenant, "err", redactAddresses(err.Error()))
		return rewrite.Strip, ""
	}
	if !ok {
		return rewrite.Strip, ""
	}
	return rewrite.Beacon, url
}

// auditRejected records a message the relay refused while receiving it
// (bare line endings, size, header, line length): nothing went upstream,
// and the record says so and why.
func (r *Relay) auditRejected(tx *transaction, reply *smtp.SMTPError) {
	rec := &AuditRecord{
		Time:         time.Now().UTC(),
		Tenant:       tx.tenant,
		RelayVersion: r.deps.Version,
		RulesVersion: r.deps.Rewriter.RulesVersion(),
		SenderDomain: domainOf(tx.from),
		DryRun:       tx.conf.cfg.DryRun,
		DKIM:         dkimNone,
		Upstream:     Reply{Code: reply.Code, Text: reply.Message},
		DurationMS:   time.Since(tx.start).Milliseconds(),
	}
	for _, rc := range tx.rcpts {
		ar := AuditRecipient{Pseudonym: rc.pseudonym, Consent: rc.consent, Action: string(rewrite.Keep), Status: reply.Code}
		if rc.consent != string(consent.Granted) {
			ar.Action = string(rewrite.Strip)
		}
		if tx.conf.cfg.AuditPlaintext {
			ar.Address = rc.addr
		}
		rec.Recipients = append(rec.Recipients, ar)
	}
	if err := r.deps.Audit.Rejected(rec); err != nil {
		r.log.Error("cannot write the audit log", "err", err)
	}
	r.metrics.messages.WithLabelValues("rejected").Inc()
}

// wantFailureDSN keeps the refused recipients whose NOTIFY asks for a
// failure notice (RFC 3461 §4.1): FAILURE, or no NOTIFY at all. NEVER, or
// SUCCESS/DELAY alone, means no DSN for that recipient.
func wantFailureDSN(rcpts []*recipient) []*recipient {
	var out []*recipient
	for _, rc := range rcpts {
		if rc.opts == nil || len(rc.opts.Notify) == 0 {
			out = append(out, rc)
			continue
		}
		for _, n := range rc.opts.Notify {
			if n == smtp.DSNNotifyFailure {
				out = append(out, rc)
				break
			}
		}
	}
	return out
}
