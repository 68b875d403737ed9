package config

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// loadFile sets every flag not in set from the TOML file at path. Keys are
// flag names; values are strings, numbers, booleans, or arrays of strings
// for list flags. Durations are Go durations ("90s") or seconds.
func (f *FlagSet) loadFile(path string, set map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var kv map[string]any
	if _, err := toml.Decode(string(data), &kv); err != nil {
		return fmt.Errorf("config file %s: %s", path, firstLine(err.Error()))
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fl := f.Lookup(k)
		if fl == nil || k == f.configFlag {
			return fmt.Errorf("config file %s: unknown setting %q (keys are the flag names of 'postern serve --help')", path, k)
		}
		if set[k] {
			continue
		}
		v, err := fileValue(kv[k])
		if err != nil {
			return fmt.Errorf("config file %s: %s: %v", path, k, err)
		}
		if err := fl.Value.Set(v); err != nil {
			return fmt.Errorf("config file %s: invalid value %q for %s: %v", path, v, k, err)
		}
	}
	return nil
}

// fileValue turns a decoded TOML value into the text a flag parses.
func fileValue(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case time.Duration:
		return x.String(), nil
	case []any:
		items := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return "", fmt.Errorf("lists hold strings only")
			}
			if strings.Contains(s, ",") {
				return "", fmt.Errorf("list item %q holds a comma", s)
			}
			items = append(items, s)
		}
		return strings.Join(items, ","), nil
	}
	return "", fmt.Errorf("unsupported value %v", v)
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
