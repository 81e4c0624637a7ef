// Package report turns pixelrelay's audit logs and scan results into one
// self-contained HTML page that a compliance officer can read, print and
// archive.
//
// The page loads nothing: no scripts, no fonts, no images, no style sheets
// from anywhere. Its style sheet is inline, its charts are inline SVG, and a
// Content-Security-Policy meta tag forbids every fetch, so opening the
// report never tells anyone that it was opened. Every value taken from a
// log is escaped by html/template; recipient addresses and pseudonyms never
// appear in it.
//
// # Using it
//
// A report is built in two steps: feed a Summary, then render it.
//
//	sum := report.NewSummary()
//	// From files: audit logs (JSON lines, optionally gzip-compressed) and
//	// `scan --json` output, in any mix. Lines that are neither are skipped,
//	// counted and listed in the report; Read fails only when r does.
//	err := sum.Read(f, "audit.jsonl")
//	// Or directly, one value at a time:
//	sum.AddAudit(&rec) // rec is a relay.AuditRecord
//	sum.AddScan(report.ScanResult{Source: "inbox/cur/1", MessageID: id, Trackers: findings})
//	err = report.WriteHTML(w, sum, report.Options{Generated: time.Now(), Version: version})
//
// `pixelrelay scan --html FILE` wires it like this: create one Summary, call
// AddScan for every message as it is scanned (unreadable messages too, with
// Err set, so they are counted), and call WriteHTML once at the end. Mark
// the scan as one source with AddSource("scan of PATH...") first if the
// report should name what was scanned.
//
// # Memory
//
// A Summary holds counts, never records: a log of any length costs memory
// in proportion to its distinct vendors, hosts, sender domains and
// campaigns, and each of those tallies stops itemising at MaxItems distinct
// values (the rest are counted together and the page says so).
//
// # Integrity
//
// While reading an audit log, Read also follows its hash chain (the format
// relay.AuditLog writes and `pixelrelay audit verify` checks) and the report
// shows, per file, whether the chain is intact and where it first breaks.
// A file whose first record continues the previous file's chain (a rotated
// log given oldest first) is shown as continuing it.
package report
