package consent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"strconv"
	"time"

	"go.etcd.io/bbolt"
)

// Export formats.
const (
	ExportCSV   = "csv"   // the native CSV, one row per event: Import reads it back
	ExportJSONL = "jsonl" // one JSON object per subject, shaped like `show --json`
)

// ExportOptions configures Export.
type ExportOptions struct {
	Format string // ExportCSV (default) or ExportJSONL
	// Tenant limits the export to one tenant ("" means DefaultTenant);
	// AllTenants exports every tenant.
	Tenant     string
	AllTenants bool
	// Address limits the export to one subject (a data-subject access
	// request, GDPR art. 15/20).
	Address string
}

// Export writes the full history of every subject (or of one), from one
// consistent snapshot, for GDPR art. 15/20 and for moving to another
// store. The CSV holds one row per event in the native columns, so
// importing it elsewhere reproduces the states; jsonl keeps every proof
// field, the hashes and the actors. Erased subjects are not exported.
func (s *Store) Export(ctx context.Context, w io.Writer, opts ExportOptions) error {
	if opts.Tenant == "" {
		opts.Tenant = DefaultTenant
	}
	if err := validTenant(opts.Tenant); err != nil {
		return err
	}
	var emit func(rec *Record) error
	bw := bufio.NewWriterSize(w, 64<<10)
	switch opts.Format {
	case "", ExportCSV:
		cw := csv.NewWriter(bw)
		if err := cw.Write(NativeColumns); err != nil {
			return err
		}
		row := make([]string, len(NativeColumns))
		emit = func(rec *Record) error {
			for _, h := range rec.History {
				row[0], row[1], row[2] = rec.Address, h.Purpose, string(h.State)
				row[3] = h.OccurredAt.Format(time.RFC3339Nano)
				row[4], row[5], row[6], row[7], row[8] = h.Method, h.Source, h.TextVersion, h.TextSHA256, h.Evidence
				row[9], row[10] = rec.Tenant, strconv.FormatBool(h.WeakProof)
				if err := cw.Write(row); err != nil {
					return err
				}
			}
			cw.Flush()
			return cw.Error()
		}
	case ExportJSONL:
		enc := json.NewEncoder(bw)
		enc.SetEscapeHTML(false)
		emit = func(rec *Record) error { return enc.Encode(rec) }
	default:
		return invalidf("unknown export format %q: use csv or jsonl", opts.Format)
	}

	if opts.Address != "" {
		rec, err := s.Show(ctx, opts.Tenant, opts.Address)
		if err != nil {
			return err
		}
		if len(rec.History) > 0 {
			if err := emit(&rec); err != nil {
				return err
			}
		}
		return bw.Flush()
	}

	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSubjects)
		if b == nil {
			return nil
		}
		var prefix []byte
		if !opts.AllTenants {
			prefix = append([]byte(opts.Tenant), 0)
		}
		c := b.Cursor()
		n := 0
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if n++; n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if len(k) < 34 || k[len(k)-33] != 0 {
				continue // not a subject key
			}
			tenant := string(k[:len(k)-33])
			rec, err := s.recordIn(tx, tenant, "", k)
			if err != nil {
				return err
			}
			if err := emit(&rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}
