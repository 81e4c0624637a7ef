package relay

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"net/textproto"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// DKIMKey is one signing key from the config file:
//
//	dkim:
//	  - {domain: acme.example, selector: px2026, key_file: /etc/pixelrelay/acme.pem}
type DKIMKey struct {
	Domain   string `yaml:"domain"`
	Selector string `yaml:"selector"`
	KeyFile  string `yaml:"key_file"`
}

// What the audit record says about DKIM, in order of precedence.
const (
	dkimNone    = "none"
	dkimKept    = "kept"
	dkimRemoved = "removed"
	dkimSigned  = "signed"
)

// dkimSignedHeaders are signed when the message carries them (RFC 6376
// §5.4.1). Signing an absent header would break the signature as soon as a
// later hop adds it (SES adds Message-ID).
var dkimSignedHeaders = []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}

type dkimSigner struct {
	domain, selector string
	key              crypto.Signer
}

// loadDKIMKeys reads every configured key, reporting all problems at once.
func loadDKIMKeys(keys []DKIMKey) (map[string]*dkimSigner, error) {
	out := map[string]*dkimSigner{}
	var errs []error
	for i, k := range keys {
		where := fmt.Sprintf("dkim[%d]", i)
		if k.Domain == "" || k.Selector == "" || k.KeyFile == "" {
			errs = append(errs, fmt.Errorf("%s: domain, selector and key_file are all required", where))
			continue
		}
		signer, err := readDKIMKey(k.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %v", where, k.Domain, err))
			continue
		}
		d := strings.ToLower(strings.TrimSuffix(k.Domain, "."))
		if _, dup := out[d]; dup {
			errs = append(errs, fmt.Errorf("%s: domain %s has two keys", where, d))
			continue
		}
		out[d] = &dkimSigner{domain: d, selector: k.Selector, key: signer}
	}
	return out, errors.Join(errs...)
}

// readDKIMKey accepts PKCS#1 or PKCS#8 RSA keys of at least 2048 bits, and
// PKCS#8 Ed25519 keys (RFC 8463).
func readDKIMKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block", path)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: PEM type %q is not a private key (want RSA PRIVATE KEY or PRIVATE KEY)", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%s: RSA key of %d bits; DKIM verifiers reject keys under 2048 bits", path, k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: key type %T is not RSA or Ed25519", path, key)
}

// fromDomain is the domain of the From header, which picks the DKIM key.
func fromDomain(h textproto.MIMEHeader) string {
	from := h.Get("From")
	if from == "" {
		return ""
	}
	if a, err := mail.ParseAddress(from); err == nil {
		return domainOf(a.Address)
	}
	if list, err := mail.ParseAddressList(from); err == nil && len(list) > 0 {
		return domainOf(list[0].Address)
	}
	// Unparseable From: take what follows the last @ up to a delimiter.
	at := strings.LastIndexByte(from, '@')
	if at < 0 {
		return ""
	}
	rest := from[at+1:]
	if i := strings.IndexAny(rest, "> ,);"); i >= 0 {
		rest = rest[:i]
	}
	return strings.ToLower(strings.TrimSuffix(rest, "."))
}

// sign computes the DKIM-Signature field for the final bytes of a copy.
func (s *dkimSigner) sign(h textproto.MIMEHeader, copy io.Reader) (string, error) {
	var keys []string
	for _, k := range dkimSignedHeaders {
		n := len(h[textproto.CanonicalMIMEHeaderKey(k)])
		for i := 0; i < n; i++ {
			keys = append(keys, k)
		}
		if k == "From" && n > 0 {
			// Oversign From: a From added later cannot slip past.
			keys = append(keys, k)
		}
	}
	signer, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 s.domain,
		Selector:               s.selector,
		Signer:                 s.key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             keys,
	})
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(signer, copy); err != nil {
		signer.Close()
		return "", err
	}
	if err := signer.Close(); err != nil {
		return "", err
	}
	return signer.Signature(), nil
}

// withoutFields returns r's header with every field named name removed
// (with its folded continuation lines), followed by the rest of r
// untouched.
func withoutFields(r io.Reader, name string) io.Reader {
	br := bufio.NewReaderSize(r, 64<<10)
	var head bytes.Buffer
	skipping := false
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// An absurdly long header line: keep it, stop filtering.
			head.Write(line)
			break
		}
		if len(line) == 0 && err != nil {
			break
		}
		if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			head.Write(line)
			break
		}
		continuation := line[0] == ' ' || line[0] == '\t'
		if !continuation {
			colon := bytes.IndexByte(line, ':')
			skipping = colon > 0 && strings.EqualFold(strings.TrimSpace(string(line[:colon])), name)
		}
		if !skipping {
			head.Write(line)
		}
		if err != nil {
			break
		}
	}
	return io.MultiReader(&head, br)
}
