package report

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// TestRenderInChromium opens reports in Debian's headless chromium, as a
// reader would, and checks what only a browser can tell: that the page
// fetched nothing, logged no error, ran no script, and fits a laptop and a
// phone screen without sideways scrolling.
//
// Screenshots and a PDF are written to the test's artifact directory:
// run `go test ./report -run Chromium -artifacts -outputdir DIR` to keep
// them, or set PIXELRELAY_ARTIFACTS=DIR to have them copied there.
func TestRenderInChromium(t *testing.T) {
	exe := findChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	profile, err := os.MkdirTemp("", "pixelrelay-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// chromium's children can still write there for a moment after
		// the browser exits.
		for range 50 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	// Start the browser once; each case opens its own tab.
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("starting %s: %v", exe, err)
	}

	cases := []struct {
		name   string
		inputs []string
	}{
		// The report an operator hands a compliance officer.
		{"audit", []string{"audit.jsonl", "junk.jsonl"}},
		// The report of `scan --html`.
		{"scan", []string{"scan.jsonl"}},
		// Script, markup and URLs in every field: must stay text.
		{"hostile", []string{"hostile.jsonl"}},
	}
	dir := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".html")
			page := render(t, readFiles(t, tc.inputs...), goldenOpts)
			if err := os.WriteFile(path, page, 0o644); err != nil {
				t.Fatal(err)
			}
			tabCtx, closeTab := chromedp.NewContext(browserCtx)
			defer closeTab()
			shots := renderPage(t, tabCtx, "file://"+path)
			for name, data := range shots {
				keepArtifact(t, tc.name+"-"+name, data)
			}
		})
	}
}

// renderPage loads url and returns its screenshots (and PDF) by name.
func renderPage(t *testing.T, ctx context.Context, url string) map[string][]byte {
	t.Helper()
	// Create the browser target first: chromedp creates it lazily, and the
	// three subscriptions below would otherwise race to do it.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatal(err)
	}
	// Subscribe before navigating, so nothing the page does is missed.
	watch, stopWatching := context.WithCancel(ctx)
	var mu sync.Mutex
	var requests, console, dialogs []string
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for ev, err := range chromedp.Events(watch, network.RequestWillBeSent) {
			if err != nil {
				return
			}
			mu.Lock()
			requests = append(requests, ev.Request.URL)
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for m, err := range chromedp.Console(watch) {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException || m.Type == chromedp.ConsoleWarning {
				mu.Lock()
				console = append(console, m.String())
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer wg.Done()
		for ev, err := range chromedp.Events(watch, cdppage.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			mu.Lock()
			dialogs = append(dialogs, ev.Message)
			mu.Unlock()
			chromedp.Call(ctx, cdppage.HandleJavaScriptDialog, cdppage.HandleJavaScriptDialogParams{Accept: false})
		}
	}()

	shots := map[string][]byte{}
	// A 14-inch laptop, then a phone, then paper.
	widths := []struct {
		name          string
		width, height int64
	}{{"laptop", 1366, 800}, {"phone", 390, 844}}
	for i, vp := range widths {
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(vp.width, vp.height)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
				t.Fatalf("loading %s: %v", url, err)
			}
		}
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.documentElement.scrollWidth - window.innerWidth`))
		if err != nil {
			t.Fatal(err)
		}
		if overflow > 0 {
			culprits, _ := chromedp.Run(ctx, chromedp.Evaluate[string](widestElements))
			t.Errorf("at %d px wide the page scrolls sideways by %.0f px; elements past the edge:\n%s", vp.width, overflow, culprits)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		shots[vp.name+".png"] = png
	}
	// Paper: an A4 page at 96 dpi is 794 px wide.
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(794, 1123),
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Media: "print"})
			return err
		}),
	); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shots["print.png"] = png
	pdf, err := chromedp.Run(ctx, chromedp.PrintToPDF(chromedp.PDFPreferCSSPageSize()))
	if err != nil {
		t.Fatal(err)
	}
	shots["print.pdf"] = pdf

	// Give late events (a lazy fetch, a deferred error) a moment to arrive.
	time.Sleep(200 * time.Millisecond)
	stopWatching()
	wg.Wait()

	for _, u := range requests {
		// The page itself is the only load allowed; data: is not a fetch.
		if u != url && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page made a request: %s", u)
		}
	}
	for _, m := range console {
		t.Errorf("console: %s", m)
	}
	for _, d := range dialogs {
		t.Errorf("a script ran and opened a dialog: %q", d)
	}
	return shots
}

// widestElements names the innermost elements that stick out past the
// right edge of the viewport, for a useful failure message.
const widestElements = `(() => {
  const w = document.documentElement.clientWidth, out = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.right > w + 0.5 && ![...el.children].some(c => c.getBoundingClientRect().right > w + 0.5)) {
      const cls = typeof el.className === "string" && el.className ? "." + el.className.trim().split(/\s+/).join(".") : "";
      out.push(el.tagName.toLowerCase() + cls + " +" + Math.round(r.right - w) + "px: " + (el.textContent || "").trim().slice(0, 50));
    }
  }
  return out.slice(0, 8).join("\n");
})()`

// findChromium returns Debian's chromium. Without it the test is skipped,
// except in CI, where a missing browser must not pass silently.
func findChromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed; CI needs it (apt-get install -y chromium)")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium)")
	return ""
}

// keepArtifact writes a test output file to the test's artifact directory
// and, when PIXELRELAY_ARTIFACTS is set, copies it there too.
func keepArtifact(t *testing.T, name string, data []byte) {
	t.Helper()
	path := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("PIXELRELAY_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyFile(filepath.Join(dir, "report-"+name), path); err != nil {
			t.Fatal(err)
		}
		t.Logf("kept %s", filepath.Join(dir, "report-"+name))
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
