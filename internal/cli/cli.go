// Package cli is how every lsmux sub-command reads its settings: flags for
// humans, LSMUX_* environment variables for containers, flags winning. It
// owns the rules that make a bad setting easy to fix: every value type says
// the form it expects, secrets are never echoed, a secret given as a flag
// (visible in ps) and an LSMUX_* variable nobody reads are both warned
// about, with the closest known name.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Env is the process environment as lsmux reads it. Tests pass their own.
type Env map[string]string

// Environ is the real process environment.
func Environ() Env {
	env := Env{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// Get returns a variable's value ("" when unset).
func (e Env) Get(name string) string { return e[name] }

// EnvName is the environment variable of a flag: prefix + the flag's name
// in upper case with '-' as '_'.
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// FlagSet is one sub-command's settings.
type FlagSet struct {
	*flag.FlagSet
	cmd      string // "lsmux serve"
	summary  string // what the command does, for -h
	prefix   string // LSMUX_
	secrets  map[string]bool
	warnings []string
}

// NewFlagSet returns the settings of a sub-command; prefix is its
// environment variables' prefix (LSMUX_, or LSMUX_SIMULATE_ for the
// simulator).
func NewFlagSet(cmd, prefix, summary string) *FlagSet {
	f := &FlagSet{FlagSet: flag.NewFlagSet(cmd, flag.ContinueOnError), cmd: cmd, summary: summary, prefix: prefix, secrets: map[string]bool{}}
	f.FlagSet.SetOutput(io.Discard) // errors are returned, help is printed by Parse
	return f
}

// Prefix is the environment prefix of the command's settings.
func (f *FlagSet) Prefix() string { return f.prefix }

// IsSecret reports whether a flag holds a secret (never shown).
func (f *FlagSet) IsSecret(name string) bool { return f.secrets[name] }

// Warnings are what Parse found worth telling the operator without
// failing: secrets passed as flags.
func (f *FlagSet) Warnings() []string { return f.warnings }

// String defines a text setting.
func (f *FlagSet) String(p *string, name, def, usage string) {
	f.FlagSet.StringVar(p, name, def, usage)
}

// Secret defines a text setting that is never printed, logged or echoed
// in an error.
func (f *FlagSet) Secret(p *string, name, usage string) {
	f.FlagSet.StringVar(p, name, "", usage)
	f.secrets[name] = true
}

// Bool defines a switch (true/false, 1/0).
func (f *FlagSet) Bool(p *bool, name string, def bool, usage string) {
	*p = def
	f.FlagSet.Var((*boolValue)(p), name, usage)
}

// Int defines a whole-number setting.
func (f *FlagSet) Int(p *int, name string, def int, usage string) {
	*p = def
	f.FlagSet.Var((*intValue)(p), name, usage)
}

// Float defines a number setting.
func (f *FlagSet) Float(p *float64, name string, def float64, usage string) {
	*p = def
	f.FlagSet.Var((*floatValue)(p), name, usage)
}

// Duration defines a duration setting (60s, 1m30s, 500ms).
func (f *FlagSet) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	f.FlagSet.Var((*durationValue)(p), name, usage)
}

// Bytes defines a size setting (512MiB, 1GB, 4096).
func (f *FlagSet) Bytes(p *int64, name string, def int64, usage string) {
	*p = def
	f.FlagSet.Var((*bytesValue)(p), name, usage)
}

// ErrHelp is returned by Parse after it printed the help a user asked for.
var ErrHelp = flag.ErrHelp

// Parse reads args, then fills every flag not given on the command line
// from its environment variable. -h and --help print the command's help to
// out and return ErrHelp. Every bad value is reported, each naming the
// variable or flag and the form expected; a secret's value never appears.
func (f *FlagSet) Parse(args []string, env Env, out io.Writer) error {
	rest, err := f.ParseArgs(args, env, out)
	if err == nil && len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q (run '%s -h' for the settings)", rest[0], f.cmd)
	}
	return err
}

// ParseArgs is Parse for a command that takes arguments besides flags
// (lsmux tail STREAM): they may come before, between or after the flags,
// and are returned in order; "--" ends the flags.
func (f *FlagSet) ParseArgs(args []string, env Env, out io.Writer) ([]string, error) {
	var rest []string
	for {
		if err := f.FlagSet.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.PrintHelp(out)
				return nil, ErrHelp
			}
			return nil, fmt.Errorf("%s (run '%s -h' for the settings)", f.hideSecrets(err.Error()), f.cmd)
		}
		left := f.Args()
		if len(left) == 0 {
			break
		}
		if consumed := len(args) - len(left); consumed > 0 && args[consumed-1] == "--" {
			rest = append(rest, left...) // after "--", all are arguments
			break
		}
		rest, args = append(rest, left[0]), left[1:]
	}
	return rest, f.fromEnv(env)
}

// fromEnv fills every flag not given on the command line from its
// environment variable, and notes secrets given as flags.
func (f *FlagSet) fromEnv(env Env) error {
	given := map[string]bool{}
	f.Visit(func(fl *flag.Flag) {
		given[fl.Name] = true
		if f.secrets[fl.Name] {
			instead := EnvName(f.prefix, fl.Name)
			if f.Lookup(fl.Name+"-file") != nil {
				instead += " or " + EnvName(f.prefix, fl.Name+"-file")
			}
			f.warnings = append(f.warnings, fmt.Sprintf("--%s was given on the command line, where every user of this machine can read it (ps); set %s instead", fl.Name, instead))
		}
	})
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if given[fl.Name] {
			return
		}
		name := EnvName(f.prefix, fl.Name)
		if v := env.Get(name); v != "" {
			if err := f.Set(fl.Name, v); err != nil {
				shown := v
				if f.secrets[fl.Name] {
					shown = "(hidden)"
				}
				errs = append(errs, fmt.Errorf("%s=%s: %w", name, shown, err))
			}
		}
	})
	return errors.Join(errs...)
}

// hideSecrets removes a secret's value from flag's own parse errors
// ("invalid value "..." for flag -name: ..."); other errors name no value.
func (f *FlagSet) hideSecrets(msg string) string {
	for name := range f.secrets {
		if strings.Contains(msg, " for flag -"+name+": ") {
			return "invalid value for --" + name
		}
	}
	return msg
}

// PrintHelp prints what the command does and every setting with its
// environment variable and default.
func (f *FlagSet) PrintHelp(out io.Writer) {
	fmt.Fprintf(out, "Usage: %s [flags]\n\n%s\n\nSettings (flag, environment variable, default):\n", f.cmd, strings.TrimSpace(f.summary))
	f.VisitAll(func(fl *flag.Flag) {
		def := fl.DefValue
		if f.secrets[fl.Name] || def == "" {
			def = "none"
		}
		fmt.Fprintf(out, "  --%s  (%s, default %s)\n      %s\n", fl.Name, EnvName(f.prefix, fl.Name), def, fl.Usage)
	})
	fmt.Fprintln(out, "\nFlags win over the environment. Run 'lsmux help' for the other commands.")
}

// Names lists the command's environment variables.
func (f *FlagSet) Names() []string {
	var out []string
	f.VisitAll(func(fl *flag.Flag) { out = append(out, EnvName(f.prefix, fl.Name)) })
	return out
}

// UnknownVars warns about environment variables that start with prefix but
// name no known setting (a typo such as LSMUX_STREAMURL is otherwise
// silently ignored), each with the closest known name.
func UnknownVars(env Env, prefix string, known []string) []string {
	set := map[string]bool{}
	for _, k := range known {
		set[k] = true
	}
	var names []string
	for k := range env {
		if strings.HasPrefix(k, prefix) && !set[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var out []string
	for _, k := range names {
		msg := k + " is not a setting lsmux knows; it is ignored"
		if best := closest(k, known); best != "" {
			msg += " (did you mean " + best + "?)"
		}
		out = append(out, msg)
	}
	return out
}

// closest returns the known name nearest to s, if it is near enough to be
// a typo of it.
func closest(s string, known []string) string {
	best, bestD := "", len(s)/3+2
	for _, k := range known {
		if d := distance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance, ignoring '_' (LSMUX_STREAMURL is
// one edit from LSMUX_STREAM_URL, not many).
func distance(a, b string) int {
	a, b = strings.ReplaceAll(a, "_", ""), strings.ReplaceAll(b, "_", "")
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Value types whose errors say what form they want (flag's own say only
// "parse error").

type boolValue bool

func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want true or false")
	}
	*b = boolValue(v)
	return nil
}
func (b *boolValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *boolValue) IsBoolFlag() bool { return true }
func (b *boolValue) Get() any         { return bool(*b) }

type intValue int

func (i *intValue) Set(s string) error {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want a whole number such as 10")
	}
	*i = intValue(v)
	return nil
}
func (i *intValue) String() string { return strconv.Itoa(int(*i)) }
func (i *intValue) Get() any       { return int(*i) }

type floatValue float64

func (f *floatValue) Set(s string) error {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return errors.New("want a number such as 0.5")
	}
	*f = floatValue(v)
	return nil
}
func (f *floatValue) String() string { return strconv.FormatFloat(float64(*f), 'g', -1, 64) }
func (f *floatValue) Get() any       { return float64(*f) }

type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		hint := ""
		if _, nerr := strconv.ParseFloat(strings.TrimSpace(s), 64); nerr == nil {
			hint = " (a unit is needed: " + strings.TrimSpace(s) + "s?)"
		}
		return fmt.Errorf("want a duration such as 60s, 1m30s or 500ms%s", hint)
	}
	*d = durationValue(v)
	return nil
}
func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Get() any       { return time.Duration(*d) }

type bytesValue int64

func (b *bytesValue) Set(s string) error {
	v, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = bytesValue(v)
	return nil
}
func (b *bytesValue) String() string { return FormatBytes(int64(*b)) }
func (b *bytesValue) Get() any       { return int64(*b) }

// byteUnits are the size suffixes accepted, longest first so "MiB" is not
// read as "B". Case does not matter.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
	{"B", 1},
}

// ByteUnitsHelp lists the accepted units, for messages and docs.
const ByteUnitsHelp = "a whole number of bytes, optionally with a unit: KiB, MiB, GiB, TiB (powers of 1024, also Ki, Mi, Gi, Ti) or KB, MB, GB, TB (powers of 1000, also K, M, G, T)"

// ParseBytes reads a size such as 512MiB, 512Mi, 1GB, 1G or 4096.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if len(t) > len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want %s", strings.TrimSpace(s), ByteUnitsHelp)
	}
	return n * mult, nil
}

// FormatBytes writes a size the way ParseBytes reads it, in the largest
// binary unit that divides it.
func FormatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
