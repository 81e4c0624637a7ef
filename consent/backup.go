package consent

import (
	"io"

	"go.etcd.io/bbolt"
)

// Backup writes a consistent snapshot of the whole database file (every
// package's buckets, the secrets included: keep backups as safe as the
// database) to w while the store stays online, and returns its size.
//
// The snapshot is one read transaction: writers go on, but a writer that
// must grow the file's memory map waits until the copy ends.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}
