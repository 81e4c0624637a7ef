package consent

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestOpenAPIMatchesCode keeps docs/openapi.yaml from drifting: its paths
// are the ones the handler serves, and its schemas name exactly the JSON
// fields the code reads and writes.
func TestOpenAPIMatchesCode(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths      map[string]any `yaml:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `yaml:"properties"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for p := range doc.Paths {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	if got := strings.Join(paths, " "); got != "/v1/backup /v1/consent/export /v1/consent/import /v1/consent/{addr}" {
		t.Errorf("documented paths: %s", got)
	}
	for _, p := range paths {
		served := false
		for _, r := range Routes() {
			served = served || p == r || strings.HasSuffix(r, "/") && strings.HasPrefix(p, r)
		}
		if !served {
			t.Errorf("%s is documented but not under Routes() %v", p, Routes())
		}
	}
	for schema, v := range map[string]any{
		"HistoryEntry": HistoryEntry{}, "Record": Record{}, "PurposeState": PurposeState{},
		"ImportResult": ImportResult{}, "EventInput": putBody{},
	} {
		var want []string
		rt := reflect.TypeOf(v)
		for i := 0; i < rt.NumField(); i++ {
			if tag := strings.Split(rt.Field(i).Tag.Get("json"), ",")[0]; tag != "" && tag != "-" {
				want = append(want, tag)
			}
		}
		var got []string
		for k := range doc.Components.Schemas[schema].Properties {
			got = append(got, k)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("schema %s documents %v; the code has %v", schema, got, want)
		}
	}
}
