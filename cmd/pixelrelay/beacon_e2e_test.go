package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// Beacon mode end to end: SMTP in, the copies upstream, loads on the
// public listener, and the statistics, with nothing about a person kept.
func TestE2EBeacons(t *testing.T) {
	up := relaytest.NewUpstream(t)
	pub := loopbackPort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", pub)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--action", "beacon", "--beacon-min-batch", "3",
		"--beacon-listen", fmt.Sprintf("127.0.0.1:%d", pub), "--beacon-base", base)
	s.consent("keen@example.com", "granted")
	msg := mustReadFile(t, newsletter)
	campaign := "autumn-2026"
	msg = append([]byte("X-Campaign-Id: "+campaign+"\n"), msg...)
	file := t.TempDir() + "/campaign.eml"
	os.WriteFile(file, msg, 0o600)
	beaconRE := regexp.MustCompile(regexp.QuoteMeta(base) + `/b/[A-Za-z0-9_-]+\.gif`)

	// Two non-consenting recipients: below the minimum batch of 3, stripped.
	if out := send(t, s.smtp, "plain", "", "", []string{"a1@example.org", "a2@example.org"}, file); out != "ok []" {
		t.Fatal(out)
	}
	for _, r := range []string{"a1@example.org", "a2@example.org"} {
		body := qpDecoded(up.MessageFor(r).Data)
		if beaconRE.Match(body) || bytes.Contains(body, []byte(trackerURL)) {
			t.Fatalf("%s below the minimum batch: beacon or tracker present", r)
		}
	}
	// Three more (and one who consented): the batch is reached.
	rcpts := []string{"b1@example.org", "b2@example.org", "b3@example.org", "keen@example.com"}
	if out := send(t, s.smtp, "plain", "", "", rcpts, file); out != "ok []" {
		t.Fatal(out)
	}
	var url string
	for _, r := range rcpts[:3] {
		m := up.MessageFor(r)
		found := beaconRE.FindAll(qpDecoded(m.Data), -1)
		if len(found) != 1 || bytes.Contains(qpDecoded(m.Data), []byte(trackerURL)) {
			t.Fatalf("%s: %d beacons, tracker kept=%v", r, len(found), bytes.Contains(qpDecoded(m.Data), []byte(trackerURL)))
		}
		if url == "" {
			url = string(found[0])
		} else if url != string(found[0]) {
			t.Fatal("recipients of one campaign got different beacon URLs")
		}
		for _, id := range []string{r, strings.ReplaceAll(r, "@", "%40")} {
			if strings.Contains(url, id) {
				t.Fatalf("the beacon URL carries %s", id)
			}
		}
	}
	if k := up.MessageFor("keen@example.com").Data; !bytes.Contains(qpDecoded(k), []byte(trackerURL)) || beaconRE.Match(qpDecoded(k)) {
		t.Error("the consenting recipient did not get the original pixel")
	}
	// Identical bytes for the whole enforced group: one upstream copy.
	if m := up.MessageFor("b1@example.org"); len(m.Rcpts) != 3 {
		t.Errorf("the enforced group went out as %d-recipient copies, want one copy for 3", len(m.Rcpts))
	}

	// 1,000 concurrent loads, each with a user agent and a referrer, from
	// an address nothing else in the test uses (serve logs 127.0.0.1 for
	// its own listeners), so that finding it anywhere below is a leak.
	const loads = 1000
	const clientIP = "127.0.0.77"
	var wg sync.WaitGroup
	errs := make(chan error, loads)
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DialContext: dialer.DialContext}}
	for i := 0; i < loads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("User-Agent", "E2EBeaconAgent/9.9")
			req.Header.Set("Referer", "https://mail.example/inbox/secret-folder")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("Cache-Control") != "no-store" {
				errs <- fmt.Errorf("status %d, headers %v", resp.StatusCode, resp.Header)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Forged and foreign tokens count nothing.
	for _, bad := range []string{url[:len(url)-6] + "A.gif", base + "/b/x.gif", base + "/v1/beacons"} {
		resp, err := client.Get(bad)
		if err != nil {
			t.Errorf("GET %s: %v", bad, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", bad, resp.StatusCode)
		}
	}

	st, body := s.api("GET", "/v1/beacons?campaign="+campaign, nil)
	var stats []struct {
		Campaign   string `json:"campaign"`
		Recipients int    `json:"recipients"`
		Loads      int    `json:"loads"`
	}
	if err := json.Unmarshal(body, &stats); st != 200 || err != nil || len(stats) != 1 {
		t.Fatalf("stats: %d %s", st, body)
	}
	if stats[0].Loads != loads || stats[0].Recipients != 5 {
		t.Errorf("stats: %d loads for %d recipients, want %d and 5", stats[0].Loads, stats[0].Recipients, loads)
	}
	recs := s.auditRecords()
	last := recs[len(recs)-1]
	if last["campaign"] != campaign || !strings.Contains(fmt.Sprint(last["recipients"]), "beacon") {
		t.Errorf("the audit record does not say beacon with the campaign: %v", last)
	}

	s.stop()
	db, err := os.ReadFile(s.db)
	if err != nil {
		t.Fatal(err)
	}
	// The loads' address, user agent and referrer, and the recipients'
	// addresses, are in neither the database nor the log. keen@example.com
	// is in the database by design: its consent record.
	nonConsenting := []string{"a1@example.org", "a2@example.org", "b1@example.org", "b2@example.org", "b3@example.org"}
	for _, leak := range append([]string{clientIP, "E2EBeaconAgent", "secret-folder"}, nonConsenting...) {
		if bytes.Contains(db, []byte(leak)) {
			t.Errorf("the database holds %q", leak)
		}
	}
	for _, leak := range append([]string{clientIP, "E2EBeaconAgent", "secret-folder", "keen@example.com"}, nonConsenting...) {
		if strings.Contains(s.out.String(), leak) {
			t.Errorf("the log holds %q", leak)
		}
	}
}
