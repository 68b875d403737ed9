// Command bench is postern's load harness. Each scenario measures postern
// and a baseline in the same run (a plain net/http handler, raw
// redis-server, a direct connection, httputil.ReverseProxy) and the harness
// prints every figure as a ratio against its baseline, with medians over
// repeated runs, because the machines are small and noisy. Figures of HTTP
// requests are also measured against baseline-hello, the cheapest Go
// handler (hello.go), and printed a second time against it.
//
//	go run ./bench                      # every scenario, 5 rounds
//	go run ./bench -run tunnel -count 3 # scenarios matching a regexp
//	go run ./bench -md                  # Markdown table for BENCHMARKS.md
//	go run ./bench -run /wrk            # tunnel produce and expose loaded by wrk (needs wrk)
//	go run ./bench -run soak -count 1 -soak 10m # the soak (skipped otherwise)
//	go run ./bench -run chaos -count 1 -chaos 50 # delivery through failures (skipped otherwise)
//
// All traffic goes to servers the harness starts on 127.0.0.1.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Figure is one measured quantity of one round: postern's value and the
// baseline's, measured in the same round.
type Figure struct {
	Name     string  // "produce req/s"
	Unit     string  // "req/s", "ms", "MB/s", "KB"
	Value    float64 // postern
	Baseline float64 // the baseline; 0 when the figure has none
	// Hello is the same quantity for baseline-hello (the cheapest Go
	// handler, see hello.go) in the same round, with the same client,
	// connections and requests; 0 when not measured. The harness prints
	// such a figure a second time, against it.
	Hello float64
	// LowerIsBetter marks latencies and sizes.
	LowerIsBetter bool
	// Goal is the ratio (Value/Baseline) the issue asks for, or for figures
	// without a baseline the absolute value; 0 when there is none.
	Goal float64
	// HelloGoal is the ratio Value/Hello the issue asks for; 0 when none.
	HelloGoal float64
}

// helloSuffix ends the name of a figure printed against baseline-hello.
const helloSuffix = " vs baseline-hello"

// Scenario is one benchmark.
type Scenario struct {
	Name string
	// Baseline says what the baseline is, for the table's legend.
	Baseline string
	// Run measures one round. It must stop by itself and start only
	// loopback servers.
	Run func(ctx context.Context, o Options) ([]Figure, error)
}

// Options are the harness settings scenarios read.
type Options struct {
	// Duration is how long each measured phase runs.
	Duration time.Duration
	// Conns is the default number of concurrent connections.
	Conns int
	// Soak is how long the soak scenario runs; 0 skips it (it is long).
	Soak time.Duration
	// Chaos is how many rounds per engine the chaos scenario runs; 0
	// skips it (it is long).
	Chaos int
	// Markdown asks scenarios that print their own report for Markdown.
	Markdown bool
}

var scenarios []Scenario

// register adds a scenario; scenario files call it from init.
func register(s Scenario) { scenarios = append(scenarios, s) }

func main() {
	run := flag.String("run", ".", "run scenarios whose name matches this `regexp`")
	count := flag.Int("count", 5, "rounds per scenario; the table shows medians")
	duration := flag.Duration("duration", 3*time.Second, "length of each measured phase")
	conns := flag.Int("conns", 32, "concurrent connections")
	md := flag.Bool("md", false, "print a Markdown table")
	list := flag.Bool("list", false, "list the scenarios and exit")
	soak := flag.Duration("soak", 0, "run the soak scenario for this `duration` (0: it is skipped); alone: -run soak -count 1 -soak 10m")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (client and in-process nodes) to `file`")
	chaosRounds := flag.Int("chaos", 0, "run the chaos scenario with this many `rounds` per engine (0: it is skipped); alone: -run chaos -count 1 -chaos 50")
	flag.Parse()

	re, err := regexp.Compile(*run)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: -run:", err)
		os.Exit(2)
	}
	sort.Slice(scenarios, func(i, j int) bool { return scenarios[i].Name < scenarios[j].Name })
	if *list {
		for _, s := range scenarios {
			fmt.Printf("%-28s baseline: %s\n", s.Name, s.Baseline)
		}
		return
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	opts := Options{Duration: *duration, Conns: *conns, Soak: *soak, Chaos: *chaosRounds, Markdown: *md}
	var rows []row
	failed := false
	for _, s := range scenarios {
		if !re.MatchString(s.Name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s (%d rounds)\n", s.Name, *count)
		var rounds [][]Figure
		for i := 0; i < *count && ctx.Err() == nil; i++ {
			figs, err := s.Run(ctx, opts)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s round %d: %v\n", s.Name, i+1, err)
				failed = true
				break
			}
			for _, f := range figs {
				fmt.Fprintf(os.Stderr, "  round %d: %s = %.4g %s (baseline %.4g)\n", i+1, f.Name, f.Value, f.Unit, f.Baseline)
				if f.Hello != 0 {
					fmt.Fprintf(os.Stderr, "  round %d: %s = %.4g %s (baseline-hello %.4g)\n", i+1, f.Name+helloSuffix, f.Value, f.Unit, f.Hello)
				}
			}
			rounds = append(rounds, figs)
		}
		rows = append(rows, summarize(s, rounds)...)
	}
	printHeader(os.Stdout, *count, *duration, *conns, *md)
	if *md {
		printMarkdown(os.Stdout, rows)
	} else {
		printTable(os.Stdout, rows)
	}
	if failed {
		pprof.StopCPUProfile() // os.Exit skips the deferred stop
		os.Exit(1)
	}
}

type row struct {
	scenario, baseline string
	fig                Figure  // medians of value and baseline
	ratio              float64 // median of per-round ratios
	rounds             int
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize takes the medians of each figure over the rounds. A figure
// with a Hello value gets a second row right after it, against
// baseline-hello.
func summarize(s Scenario, rounds [][]Figure) []row {
	if len(rounds) == 0 {
		return nil
	}
	var out []row
	for i, f := range rounds[0] {
		var vals, bases, ratios, hellos, helloRatios []float64
		for _, r := range rounds {
			if i >= len(r) {
				continue
			}
			vals = append(vals, r[i].Value)
			bases = append(bases, r[i].Baseline)
			if r[i].Baseline != 0 {
				ratios = append(ratios, r[i].Value/r[i].Baseline)
			}
			if r[i].Hello != 0 {
				hellos = append(hellos, r[i].Hello)
				helloRatios = append(helloRatios, r[i].Value/r[i].Hello)
			}
		}
		m := f
		m.Value, m.Baseline = median(vals), median(bases)
		out = append(out, row{scenario: s.Name, baseline: s.Baseline, fig: m, ratio: median(ratios), rounds: len(vals)})
		if len(hellos) > 0 {
			h := m
			h.Name += helloSuffix
			h.Baseline, h.Goal = median(hellos), f.HelloGoal
			out = append(out, row{scenario: s.Name, baseline: helloLegend, fig: h, ratio: median(helloRatios), rounds: len(hellos)})
		}
	}
	return out
}

// verdict says whether a figure meets its goal.
func verdict(r row) string {
	f := r.fig
	if f.Goal == 0 {
		return ""
	}
	v := r.ratio
	if f.Baseline == 0 {
		v = f.Value
	}
	ok := v >= f.Goal
	if f.LowerIsBetter {
		ok = v <= f.Goal
	}
	if ok {
		return "met"
	}
	return "MISSED"
}

func goalText(f Figure) string {
	if f.Goal == 0 {
		return ""
	}
	op := ">="
	if f.LowerIsBetter {
		op = "<="
	}
	if f.Baseline == 0 {
		return fmt.Sprintf("%s %.4g %s", op, f.Goal, f.Unit)
	}
	return fmt.Sprintf("%s %.2fx", op, f.Goal)
}

func ratioText(r row) string {
	if r.fig.Baseline == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", r.ratio)
}

func baseText(f Figure) string {
	if f.Baseline == 0 {
		return "-"
	}
	return fmt.Sprintf("%.4g", f.Baseline)
}

func printHeader(w io.Writer, count int, d time.Duration, conns int, md bool) {
	prefix := ""
	if md {
		prefix = "- "
	}
	fmt.Fprintf(w, "%smachine: %s, %d cores (GOMAXPROCS %d), %s %s/%s\n", prefix, cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "%sdate: %s\n", prefix, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "%scommand: go run ./bench %s\n", prefix, strings.Join(os.Args[1:], " "))
	fmt.Fprintf(w, "%srounds: %d per scenario, medians shown; phases of %v; %d connections unless the figure says otherwise\n\n", prefix, count, d, conns)
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tfigure\tpostern\tbaseline\tratio\tgoal\t\tbaseline is")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%.4g %s\t%s\t%s\t%s\t%s\t%s\n", r.scenario, r.fig.Name, r.fig.Value, r.fig.Unit,
			baseText(r.fig), ratioText(r), goalText(r.fig), verdict(r), r.baseline)
	}
	tw.Flush()
}

func printMarkdown(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| scenario | figure | postern | baseline | ratio | goal | | baseline is |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %.4g %s | %s | %s | %s | %s | %s |\n", r.scenario, r.fig.Name, r.fig.Value, r.fig.Unit,
			baseText(r.fig), ratioText(r), goalText(r.fig), verdict(r), r.baseline)
	}
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
