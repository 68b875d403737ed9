// Package config turns command lines, environments and config files into
// settings. Every flag has a POSTERN_* environment variable, and some also
// answer to the variables of the relays postern replaces
// (TUNNEL_ACCESS_TOKEN, ...), so their deployments keep working. A config
// file (TOML, one key per flag name) may hold any of them. Precedence:
// flag, then POSTERN_*, then the aliases in the order given, then the
// config file, then the default. An environment variable set to the empty
// string counts as unset.
package config

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// FlagSet is a flag.FlagSet whose flags also read environment variables.
type FlagSet struct {
	*flag.FlagSet
	env map[string][]string // flag name -> environment variables, in precedence order
	// group is the help section of each flag, groups the sections in the
	// order they were opened; current is the one Group opened last.
	group   map[string]string
	groups  []string
	current string
	order   []string // flag names in the order defined
	// configFlag names the flag that gives the config file; empty: none.
	configFlag string
	config     *string
}

// NewFlagSet returns an empty flag set that reports errors instead of
// exiting.
func NewFlagSet(name string) *FlagSet {
	fs := &FlagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), env: make(map[string][]string), group: make(map[string]string)}
	fs.SetOutput(io.Discard)
	return fs
}

// EnvName is the POSTERN_* variable of a flag: "tunnel-max-len" ->
// "POSTERN_TUNNEL_MAX_LEN".
func EnvName(flagName string) string {
	return "POSTERN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Var defines a flag backed by v whose environment variables are
// POSTERN_<NAME> and then aliases.
func (f *FlagSet) Var(v flag.Value, name, usage string, aliases ...string) {
	f.FlagSet.Var(v, name, usage)
	f.env[name] = append([]string{EnvName(name)}, aliases...)
	f.order = append(f.order, name)
	if f.current != "" {
		f.group[name] = f.current
	}
}

// Group opens a help section: the flags defined after it are listed under
// title (a flag defined before any Group has none).
func (f *FlagSet) Group(title string) {
	f.current = title
	f.groups = append(f.groups, title)
}

// Groups returns the help sections in the order they were opened, and the
// section of each flag.
func (f *FlagSet) Groups() (titles []string, of func(flagName string) string) {
	return f.groups, func(name string) string { return f.group[name] }
}

// Names returns the flag names in the order they were defined (VisitAll
// goes in lexical order).
func (f *FlagSet) Names() []string { return f.order }

// EnvNames returns the environment variables of a flag, in precedence
// order.
func (f *FlagSet) EnvNames(flagName string) []string { return f.env[flagName] }

// String defines a string flag stored in *p; *p's current value is the
// default.
func (f *FlagSet) String(p *string, name, usage string, aliases ...string) {
	f.Var((*stringValue)(p), name, usage, aliases...)
}

// Int defines an integer flag stored in *p.
func (f *FlagSet) Int(p *int, name, usage string, aliases ...string) {
	f.Var((*intValue)(p), name, usage, aliases...)
}

// Int64 defines a 64-bit integer flag stored in *p.
func (f *FlagSet) Int64(p *int64, name, usage string, aliases ...string) {
	f.Var((*int64Value)(p), name, usage, aliases...)
}

// Float64 defines a floating-point flag stored in *p.
func (f *FlagSet) Float64(p *float64, name, usage string, aliases ...string) {
	f.Var((*float64Value)(p), name, usage, aliases...)
}

// Prefixes defines a comma-separated list of CIDR prefixes stored in *p; a
// bare address counts as a prefix of its full length.
func (f *FlagSet) Prefixes(p *[]netip.Prefix, name, usage string, aliases ...string) {
	f.Var((*prefixesValue)(p), name, usage, aliases...)
}

// Bool defines a boolean flag stored in *p. Besides Go's forms it accepts
// "yes"/"no" and "on"/"off", as environment variables often say.
func (f *FlagSet) Bool(p *bool, name, usage string, aliases ...string) {
	f.Var((*boolValue)(p), name, usage, aliases...)
}

// Duration defines a duration flag stored in *p. A bare number counts as
// seconds, as the original relays' settings did ("60" = "60s").
func (f *FlagSet) Duration(p *time.Duration, name, usage string, aliases ...string) {
	f.Var((*durationValue)(p), name, usage, aliases...)
}

// List defines a comma-separated list flag stored in *p. Empty items are
// dropped and spaces around items trimmed.
func (f *FlagSet) List(p *[]string, name, usage string, aliases ...string) {
	f.Var((*listValue)(p), name, usage, aliases...)
}

// Repeated defines a list flag stored in *p that may be given many
// times, each a name or a comma-separated list: --acme-domain a
// --acme-domain b,c. The environment and config file give it once.
func (f *FlagSet) Repeated(p *[]string, name, usage string, aliases ...string) {
	f.Var(&repeatedValue{p: p}, name, usage, aliases...)
}

// Lines defines a flag stored in *p that may be given many times, each
// one whole item (commas included: "Cache-Control: no-store, private");
// an environment variable gives them one per line.
func (f *FlagSet) Lines(p *[]string, name, usage string, aliases ...string) {
	f.Var(&linesValue{p: p}, name, usage, aliases...)
}

// ConfigFile defines the flag (and its POSTERN_* variable) that names a
// config file whose keys are this set's flag names.
func (f *FlagSet) ConfigFile(p *string, name, usage string) {
	f.String(p, name, usage)
	f.configFlag, f.config = name, p
}

// Parse parses args, then fills every flag not given on the command line
// from its environment variables, read with getenv, and then from the
// config file, when one is named.
func (f *FlagSet) Parse(args []string, getenv func(string) string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return f.Resolve(getenv, func(name string) bool { return set[name] })
}

// Resolve fills every flag for which given reports false (it was not on
// the command line) from its environment variables, read with getenv, and
// then from the config file, when one is named. A command line parsed by
// another parser (the CLI's) calls it after parsing.
func (f *FlagSet) Resolve(getenv func(string) string, given func(name string) bool) error {
	set := map[string]bool{}
	f.VisitAll(func(fl *flag.Flag) {
		if given(fl.Name) {
			set[fl.Name] = true
		}
	})
	var err error
	fromEnv := func(fl *flag.Flag) {
		if set[fl.Name] || err != nil {
			return
		}
		for _, name := range f.env[fl.Name] {
			v := getenv(name)
			if v == "" {
				continue
			}
			if e := fl.Value.Set(v); e != nil {
				err = fmt.Errorf("invalid value %q for %s: %v", v, name, e)
			}
			set[fl.Name] = true
			return
		}
	}
	if f.configFlag != "" {
		// The config file's own name comes from the flag or environment
		// only.
		fromEnv(f.Lookup(f.configFlag))
	}
	f.VisitAll(fromEnv)
	if err != nil || f.config == nil || *f.config == "" {
		return err
	}
	return f.loadFile(*f.config, set)
}

// PrintDefaults writes one entry per flag: its name, environment variables,
// default and usage.
func (f *FlagSet) PrintDefaults(w io.Writer) {
	f.VisitAll(func(fl *flag.Flag) {
		fmt.Fprintf(w, "  --%s", fl.Name)
		name, usage := flag.UnquoteUsage(fl)
		if name == "value" {
			switch fl.Value.(type) {
			case *durationValue:
				name = "duration"
			case *intValue, *int64Value:
				name = "int"
			case *float64Value:
				name = "number"
			case *listValue, *repeatedValue, *prefixesValue, *linesValue:
				name = "list"
			case *boolValue:
				name = ""
			default:
				name = "string"
			}
		}
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n      %s", usage)
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" {
			fmt.Fprintf(w, " (default %s)", fl.DefValue)
		}
		fmt.Fprintf(w, "\n      env: %s\n", strings.Join(f.env[fl.Name], ", "))
	})
}

// Type names the value in help (pflag.Value).
func (v *stringValue) Type() string { return "string" }

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Get() any           { return string(*v) }

// Type names the value in help (pflag.Value).
func (v *intValue) Type() string { return "int" }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

// Type names the value in help (pflag.Value).
func (v *int64Value) Type() string { return "int" }

type int64Value int64

func (v *int64Value) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("not an integer")
	}
	*v = int64Value(n)
	return nil
}
func (v *int64Value) String() string { return strconv.FormatInt(int64(*v), 10) }

// Type names the value in help (pflag.Value).
func (v *float64Value) Type() string { return "number" }

type float64Value float64

func (v *float64Value) Set(s string) error {
	n, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || n != n {
		return fmt.Errorf("not a number")
	}
	*v = float64Value(n)
	return nil
}
func (v *float64Value) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }

// Type names the value in help (pflag.Value).
func (v *prefixesValue) Type() string { return "prefixes" }

type prefixesValue []netip.Prefix

func (v *prefixesValue) Set(s string) error {
	var out []netip.Prefix
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil {
				return fmt.Errorf("%q is not an address or CIDR prefix", item)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	*v = out
	return nil
}
func (v *prefixesValue) String() string {
	parts := make([]string, len(*v))
	for i, p := range *v {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// Type names the value in help (pflag.Value).
func (v *boolValue) Type() string { return "bool" }

type boolValue bool

func (v *boolValue) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "t", "true", "yes", "y", "on":
		*v = true
	case "0", "f", "false", "no", "n", "off":
		*v = false
	default:
		return fmt.Errorf("not a boolean (want 1/0, true/false, yes/no, on/off)")
	}
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

// Type names the value in help (pflag.Value).
func (v *durationValue) Type() string { return "duration" }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*v = durationValue(time.Duration(n) * time.Second)
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration (want seconds, or a Go duration such as 1m30s)")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }

// Type names the value in help (pflag.Value).
func (v *listValue) Type() string { return "list" }

type listValue []string

func (v *listValue) Set(s string) error {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	*v = out
	return nil
}
func (v *listValue) String() string { return strings.Join(*v, ",") }

// Type names the value in help (pflag.Value).
func (v *repeatedValue) Type() string { return "list" }

// repeatedValue is a listValue whose later Sets add to the first's.
type repeatedValue struct {
	p   *[]string
	set bool
}

func (v *repeatedValue) Set(s string) error {
	var more []string
	if err := (*listValue)(&more).Set(s); err != nil {
		return err
	}
	if !v.set {
		*v.p, v.set = nil, true
	}
	*v.p = append(*v.p, more...)
	return nil
}
func (v *repeatedValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

// linesValue is a repeated flag whose items are whole lines.
type linesValue struct{ p *[]string }

func (v *linesValue) Set(s string) error {
	for _, item := range strings.Split(s, "\n") {
		if item = strings.TrimSpace(item); item != "" {
			*v.p = append(*v.p, item)
		}
	}
	return nil
}

func (v *linesValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return strings.Join(*v.p, "\n")
}

func (v *linesValue) Type() string { return "list" }
