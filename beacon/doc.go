// Package beacon is pixelrelay's delivery-only beacon: a campaign-wide
// image URL that counts loads per (tenant, campaign, UTC day) and can never
// tell who loaded it.
//
// It leans on the aggregate-statistics exemption that France's CNIL and
// Italy's Garante grant to open-tracking pixels, so everything here is built
// to keep that footing:
//
//   - A token carries a tenant, a campaign key and a UTC day, signed with
//     HMAC-SHA-256; it never carries anything about a recipient, and every
//     recipient of a campaign on a day gets the same URL (see [Beacons.URL]).
//   - The small-batch guard ([Beacons.Decide]) only hands out a beacon once
//     the campaign has at least MinBatch non-consenting recipients that day,
//     because a counter for a batch of one is individual tracking.
//   - The public endpoint ([Beacons.PublicHandler]) answers a fixed 43-byte
//     GIF with Cache-Control: no-store, no cookie and no redirect. It never
//     reads, logs or stores the client's address, user agent or referrer.
//   - Counters are aggregate: (tenant, campaign, day) → recipients,
//     beaconed recipients, loads. There are no per-message or per-load rows.
//
// Counts are kept in memory and flushed to bbolt in one transaction per
// interval, so a burst of loads is not one fsync each; [Beacons.Stats]
// includes what is not flushed yet, and [Beacons.Close] flushes the rest.
//
// The package stores its data in the caller's bbolt database, in buckets
// whose names start with "beacon_", and never opens files itself. The
// signing keys live in the database too: [LoadKeys] creates the first one on
// first use and [RotateKey] adds a new one (see docs/beacon.md).
package beacon
