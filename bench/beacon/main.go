// Command beaconbench serves the real beacon endpoint and a GIF-only
// baseline on two loopback ports, for bench/beacon/run.sh to load with wrk
// in the same run. Both use the same http.Server settings (those of
// Beacons.PublicServer), so the difference is the endpoint's own work:
// parsing and verifying the token and counting the load.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/beacon"
)

func main() {
	urlsFile := flag.String("urls", "", "write the beacon and baseline URLs to this file once both listen")
	flag.Parse()
	if err := run(*urlsFile); err != nil {
		fmt.Fprintln(os.Stderr, "beaconbench:", err)
		os.Exit(1)
	}
}

func run(urlsFile string) error {
	dir, err := os.MkdirTemp("", "beaconbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := bbolt.Open(filepath.Join(dir, "bench.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()

	beaconLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	baselineLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	base := "http://" + beaconLn.Addr().String()
	b, err := beacon.Open(db, beacon.Options{Base: base, MinBatch: 1})
	if err != nil {
		return err
	}
	u, ok, err := b.Decide("default", "bench-campaign", 1, time.Now())
	if err != nil || !ok {
		return fmt.Errorf("no beacon URL: %v", err)
	}
	beaconSrv := b.PublicServer("")
	baselineSrv := b.PublicServer("")
	baselineSrv.Handler = beacon.BaselineHandler()
	go beaconSrv.Serve(beaconLn)
	go baselineSrv.Serve(baselineLn)

	if urlsFile != "" {
		line := fmt.Sprintf("%s %s\n", u, "http://"+baselineLn.Addr().String()+"/b/baseline.gif")
		if err := os.WriteFile(urlsFile, []byte(line), 0o644); err != nil {
			return err
		}
	} else {
		fmt.Println("beacon:  ", u)
		fmt.Println("baseline:", "http://"+baselineLn.Addr().String()+"/b/baseline.gif")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	beaconSrv.Close()
	baselineSrv.Close()
	if err := b.Close(); err != nil {
		return err
	}
	stats, err := beacon.ReadStats(db, beacon.Filter{})
	if err != nil {
		return err
	}
	for _, s := range stats {
		fmt.Fprintf(os.Stderr, "beaconbench: %d image loads counted and stored for %s\n", s.Loads, s.Campaign)
	}
	return nil
}
