package main

// The soak's report: figures, flatness judged over the samples, errors.

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type soakReport struct {
	d, loadTime, drainTime, warmup time.Duration
	idle                           soakSample
	samples                        []soakSample
	tunnels                        []*soakTunnel
	inbox                          *soakInbox
	chans                          *soakChanStats
	relayOps, exposeOps            int64
	counters                       map[string]float64
	counterDetail                  []string
	logWarns                       int
	stopTime                       time.Duration
	errs                           *soakErrors
}

// trend is what flatness is judged on for one series.
type trend struct {
	warm, last, max, slope, growth, allowed float64
	flat                                    bool
}

// judge compares the last sample with the first judged one (at or after
// the warm-up) and fits a least-squares line over the judged samples: both
// the last sample's rise and the line's rise over the judged time must
// stay within rel of the warm-up value plus slack.
func judge(samples []soakSample, warmup time.Duration, value func(soakSample) float64, rel, slack float64) (trend, bool) {
	var judged []soakSample
	for _, s := range samples {
		if s.at >= warmup {
			judged = append(judged, s)
		}
	}
	if len(judged) < 2 {
		return trend{}, false
	}
	var t trend
	t.warm, t.last = value(judged[0]), value(judged[len(judged)-1])
	var sx, sy, sxx, sxy float64
	for _, s := range judged {
		x, y := s.at.Seconds(), value(s)
		t.max = math.Max(t.max, y)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(judged))
	if den := n*sxx - sx*sx; den > 0 {
		t.slope = (n*sxy - sx*sy) / den
	}
	span := (judged[len(judged)-1].at - judged[0].at).Seconds()
	t.growth = t.slope * span
	t.allowed = t.warm*rel + slack
	t.flat = t.last-t.warm <= t.allowed && t.growth <= t.allowed
	return t, true
}

func (rep *soakReport) print(w io.Writer, md bool) ([]Figure, bool) {
	ok := true
	var created, delivered, lost, redelivered, duplicated, misordered, replies int
	for _, t := range rep.tunnels {
		c, d, l := t.counts()
		t.mu.Lock()
		created, delivered, lost = created+c, delivered+d, lost+l
		redelivered, duplicated, misordered, replies = redelivered+t.redelivered, duplicated+t.duplicated, misordered+t.misordered, replies+t.replies
		t.mu.Unlock()
	}
	copies, acks := rep.inbox.missing()
	rep.inbox.mu.Lock()
	ib := struct{ sends, receives, delivered, acks, dup, stray int }{rep.inbox.sends, rep.inbox.receives, rep.inbox.delivered, rep.inbox.acks, rep.inbox.duplicated, rep.inbox.stray}
	rep.inbox.mu.Unlock()
	ch := rep.chans

	for name, v := range rep.counters {
		if v != 0 {
			ok = false
			rep.errs.add("server", "%s = %g, want 0", name, v)
		}
	}

	type line struct {
		capability, operations string
		errors                 int
		lost, duplicated       int64
		notes                  string
	}
	lines := []line{
		{"tunnels", fmt.Sprintf("%d messages sent (201), %d deliveries, %d replies", created, delivered, replies), rep.errs.count("tunnels"),
			int64(lost), int64(duplicated + misordered), fmt.Sprintf("%d tunnels (3 pending+ack, 2 long-poll, 2 plain, 1 reply); %d pending re-deliveries (allowed)", len(rep.tunnels), redelivered)},
		{"inbox", fmt.Sprintf("%d sends/exchanges, %d receives, %d copies and %d acks received", ib.sends, ib.receives, ib.delivered, ib.acks), rep.errs.count("inbox"),
			int64(copies + acks), int64(ib.dup + ib.stray), fmt.Sprintf("%d actors, half sending by exchange; lost counts copies and acks", soakInboxActors)},
		{"channels", fmt.Sprintf("%d subscriptions, %d messages received", ch.subscriptions.Load(), ch.delivered.Load()), rep.errs.count("channels"),
			ch.lost.Load(), ch.duplicated.Load(), fmt.Sprintf("%d channels (1 published by websocket, the others by POST) x %d subscribers; %d gaps signalled, %d subscriptions dropped", soakChannels, soakSubscribers, ch.gaps.Load(), ch.dropped.Load())},
		{"relay", fmt.Sprintf("%d requests", rep.relayOps), rep.errs.count("relay"), 0, 0, "bodies checked byte for byte"},
		{"expose", fmt.Sprintf("%d requests", rep.exposeOps), rep.errs.count("expose"), 0, 0, "bodies checked byte for byte"},
		{"server", "", rep.errs.count("server") + rep.errs.count("metrics"), 0, 0, fmt.Sprintf("exit 0 after SIGTERM (in %v) and no error in its log (%d warnings) checked", rep.stopTime.Round(time.Millisecond), rep.logWarns)},
	}
	for _, l := range lines {
		if l.errors > 0 || l.lost > 0 || l.duplicated > 0 {
			ok = false
		}
	}

	rss, okR := judge(rep.samples, rep.warmup, func(s soakSample) float64 { return s.rss }, soakFlatRel, soakRSSSlack)
	gor, okG := judge(rep.samples, rep.warmup, func(s soakSample) float64 { return s.goroutines }, soakFlatRel, soakGoroutineSlack)
	if !okR || !okG {
		ok = false
		rep.errs.add("server", "fewer than 2 samples after the warm-up of %v: run longer", rep.warmup)
	}
	if !rss.flat || !gor.flat {
		ok = false
	}

	fmt.Fprintf(w, "\nSoak: %v of load, then %v of draining; warm-up %v, a sample every %v\n\n", rep.loadTime.Round(time.Second), rep.drainTime.Round(100*time.Millisecond), rep.warmup, soakSampleEvery)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if md {
		fmt.Fprintln(w, "| capability | operations | errors | lost | duplicated or misordered | notes |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
	} else {
		fmt.Fprintln(tw, "capability\toperations\terrors\tlost\tdup/misordered\tnotes")
	}
	for _, l := range lines {
		if md {
			fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s |\n", l.capability, l.operations, l.errors, l.lost, l.duplicated, l.notes)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", l.capability, l.operations, l.errors, l.lost, l.duplicated, l.notes)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)

	verdict := func(t trend) string {
		if t.flat {
			return "flat"
		}
		return "GROWING"
	}
	mb := func(v float64) string { return fmt.Sprintf("%.1f MB", v/(1<<20)) }
	if md {
		fmt.Fprintln(w, "| server | idle (before load) | after warm-up | last | max | trend over the run | allowed rise | |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
		fmt.Fprintf(w, "| RSS | %s | %s | %s | %s | %+.2f MB | %s | %s |\n", mb(rep.idle.rss), mb(rss.warm), mb(rss.last), mb(rss.max), rss.growth/(1<<20), mb(rss.allowed), verdict(rss))
		fmt.Fprintf(w, "| goroutines | %.0f | %.0f | %.0f | %.0f | %+.1f | %.0f | %s |\n", rep.idle.goroutines, gor.warm, gor.last, gor.max, gor.growth, gor.allowed, verdict(gor))
	} else {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "server\tidle\tafter warm-up\tlast\tmax\ttrend over the run\tallowed rise\t")
		fmt.Fprintf(tw, "RSS\t%s\t%s\t%s\t%s\t%+.2f MB\t%s\t%s\n", mb(rep.idle.rss), mb(rss.warm), mb(rss.last), mb(rss.max), rss.growth/(1<<20), mb(rss.allowed), verdict(rss))
		fmt.Fprintf(tw, "goroutines\t%.0f\t%.0f\t%.0f\t%.0f\t%+.1f\t%.0f\t%s\n", rep.idle.goroutines, gor.warm, gor.last, gor.max, gor.growth, gor.allowed, verdict(gor))
		tw.Flush()
	}
	fmt.Fprintf(w, "\nflat: the last sample and the least-squares trend over the samples from the warm-up on each rise by at most %.0f%% of the warm-up value plus %d MB (RSS) or %d (goroutines)\n",
		soakFlatRel*100, soakRSSSlack>>20, soakGoroutineSlack)
	fmt.Fprintln(w, "\nsamples (t: RSS MB / goroutines):")
	var sb strings.Builder
	for i, s := range rep.samples {
		fmt.Fprintf(&sb, "%v: %.1f/%.0f", s.at.Round(time.Second), s.rss/(1<<20), s.goroutines)
		if i%6 == 5 || i == len(rep.samples)-1 {
			fmt.Fprintln(w, "  "+sb.String())
			sb.Reset()
		} else {
			sb.WriteString(", ")
		}
	}
	names := make([]string, 0, len(rep.counters))
	for name := range rep.counters {
		names = append(names, name)
	}
	slices.Sort(names)
	fmt.Fprint(w, "\nserver counters that must stay 0:")
	for _, name := range names {
		fmt.Fprintf(w, " %s=%g", name, rep.counters[name])
	}
	fmt.Fprintln(w)
	for _, d := range rep.counterDetail {
		fmt.Fprintln(w, "  "+d)
	}
	if n := rep.errs.total(); n > 0 {
		ok = false
		fmt.Fprintf(w, "\n%d errors; the first:\n", n)
		rep.errs.mu.Lock()
		for _, e := range rep.errs.first {
			fmt.Fprintln(w, "  "+e)
		}
		rep.errs.mu.Unlock()
	}
	result := "PASSED"
	if !ok {
		result = "FAILED"
	}
	fmt.Fprintf(w, "\nsoak %s\n\n", result)

	figs := []Figure{
		{Name: "tunnel messages sent and delivered", Unit: "msgs", Value: float64(created)},
		{Name: "inbox copies and acks received", Unit: "msgs", Value: float64(ib.delivered + ib.acks)},
		{Name: "channel messages received", Unit: "msgs", Value: float64(ch.delivered.Load())},
		{Name: "relay requests checked", Unit: "req", Value: float64(rep.relayOps)},
		{Name: "expose requests checked", Unit: "req", Value: float64(rep.exposeOps)},
		{Name: "errors", Unit: "", Value: float64(rep.errs.total()), LowerIsBetter: true},
		{Name: "lost or duplicated", Unit: "msgs", Value: float64(int64(lost+copies+acks+duplicated+misordered+ib.dup+ib.stray) + ch.lost.Load() + ch.duplicated.Load()), LowerIsBetter: true},
		{Name: "RSS after warm-up", Unit: "MB", Value: rss.warm / (1 << 20), LowerIsBetter: true},
		{Name: "RSS last", Unit: "MB", Value: rss.last / (1 << 20), LowerIsBetter: true},
		{Name: "RSS max", Unit: "MB", Value: rss.max / (1 << 20), LowerIsBetter: true},
		{Name: "goroutines after warm-up", Unit: "", Value: gor.warm, LowerIsBetter: true},
		{Name: "goroutines last", Unit: "", Value: gor.last, LowerIsBetter: true},
		{Name: "goroutines max", Unit: "", Value: gor.max, LowerIsBetter: true},
	}
	return figs, ok
}
