package consent

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with errors.Is; the concrete errors carry the
// detail an operator needs.
var (
	// ErrInUse: another process (normally a running serve) holds the
	// database file's lock. The concrete error is *InUseError.
	ErrInUse = errors.New("database is in use by a running pixelrelay")
	// ErrInvalidInput marks a request the caller must fix: a bad address,
	// an undeclared purpose, a future timestamp. HTTP 400.
	ErrInvalidInput = errors.New("invalid input")
	// ErrConflict marks an event that contradicts a later one already
	// recorded (it is older than the current state). HTTP 409.
	ErrConflict = errors.New("conflicts with the recorded history")
	// ErrNotFound: nothing is stored for that subject. HTTP 404, except for
	// erasure, which is idempotent and answers {"erased": false}.
	ErrNotFound = errors.New("not found")
	// ErrReadOnly: a write on a store opened with Options.ReadOnly.
	ErrReadOnly = errors.New("database opened read-only")
	// ErrCorrupt: the file is not a readable pixelrelay database.
	ErrCorrupt = errors.New("database is damaged or not a pixelrelay database")
	// ErrChainBroken: VerifyChain found tampering or damage.
	ErrChainBroken = errors.New("consent event chain is broken")
	// ErrAPIDisabled: NewHandler was given no token, so the API answers
	// every request with 404 and this message. serve logs it at startup.
	ErrAPIDisabled = errors.New("consent API disabled: no --api-token (or PIXELRELAY_API_TOKEN) configured")
)

// InUseError is returned by Open when another process holds the file. Its
// message is pinned by CONTRACTS.md.
type InUseError struct{ Path string }

func (e *InUseError) Error() string {
	return fmt.Sprintf("database %s is in use by a running pixelrelay; use --server URL", e.Path)
}

// Is makes errors.Is(err, ErrInUse) true.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// inputError is an ErrInvalidInput with its own message.
type inputError struct{ msg string }

func (e *inputError) Error() string        { return e.msg }
func (e *inputError) Is(target error) bool { return target == ErrInvalidInput }

func invalidf(format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...)}
}

// conflictError is an ErrConflict with its own message.
type conflictError struct{ msg string }

func (e *conflictError) Error() string        { return e.msg }
func (e *conflictError) Is(target error) bool { return target == ErrConflict }

func conflictf(format string, args ...any) error {
	return &conflictError{msg: fmt.Sprintf(format, args...)}
}

// chainError locates the first bad event of the chain.
type chainError struct {
	Seq uint64
	msg string
}

func (e *chainError) Error() string {
	return fmt.Sprintf("consent event chain is broken at event #%d: %s", e.Seq, e.msg)
}
func (e *chainError) Is(target error) bool { return target == ErrChainBroken }

// stateError: the chain is intact but a current-state record, which is
// what lookups read, disagrees with it.
type stateError struct{ msg string }

func (e *stateError) Error() string {
	return "consent states do not match the event chain: " + e.msg
}
func (e *stateError) Is(target error) bool { return target == ErrChainBroken }
