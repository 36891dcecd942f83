// Failure detection of hashicorp/memberlist with its default LAN configuration, measured the way
// `stork bench failover` measures Stork's: N members on loopback, one stops without leaving (as if killed),
// and the time runs until every other member has declared it dead. Repeated for several rounds, a fresh
// member joining after each kill. Prints one JSON object per round and a summary line.
//
// Build (GOPATH mode, with Debian's golang-github-hashicorp-memberlist-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/memberlist-anchor .   (or ./build.sh, which installs them)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

type deaths struct {
	mu   sync.Mutex
	seen map[string]map[string]time.Time // victim -> observer -> when
}

type delegate struct {
	self string
	d    *deaths
}

func (e *delegate) NotifyJoin(n *memberlist.Node)   {}
func (e *delegate) NotifyUpdate(n *memberlist.Node) {}
func (e *delegate) NotifyLeave(n *memberlist.Node) {
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	if e.d.seen[n.Name] == nil {
		e.d.seen[n.Name] = map[string]time.Time{}
	}
	if _, ok := e.d.seen[n.Name][e.self]; !ok {
		e.d.seen[n.Name][e.self] = time.Now()
	}
}

func start(name string, port int, d *deaths, join []string) *memberlist.Memberlist {
	config := memberlist.DefaultLANConfig()
	config.Name = name
	config.BindAddr = "127.0.0.1"
	config.BindPort = port
	config.AdvertisePort = port
	config.LogOutput = io.Discard
	config.Events = &delegate{self: name, d: d}
	list, err := memberlist.Create(config)
	if err != nil {
		log.Fatalf("create %s: %v", name, err)
	}
	if len(join) > 0 {
		if _, err := list.Join(join); err != nil {
			log.Fatalf("join %s: %v", name, err)
		}
	}
	return list
}

func main() {
	nodes := flag.Int("nodes", 5, "members")
	rounds := flag.Int("rounds", 20, "kills")
	base := flag.Int("base-port", 29000, "first port")
	flag.Parse()

	d := &deaths{seen: map[string]map[string]time.Time{}}
	type member struct {
		name string
		port int
		list *memberlist.Memberlist
	}
	var live []member
	next := 0
	add := func() {
		name := fmt.Sprintf("m%d", next)
		port := *base + next
		var join []string
		for _, m := range live {
			join = append(join, fmt.Sprintf("127.0.0.1:%d", m.port))
		}
		live = append(live, member{name, port, start(name, port, d, join)})
		next++
	}
	for i := 0; i < *nodes; i++ {
		add()
	}
	waitConverged := func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			ok := true
			for _, m := range live {
				if m.list.NumMembers() != len(live) {
					ok = false
				}
			}
			if ok {
				return
			}
		}
		log.Fatal("members did not converge")
	}
	waitConverged()

	var times []float64
	for round := 0; round < *rounds; round++ {
		victim := live[0]
		live = live[1:]
		killed := time.Now()
		// Stop without leaving: the others must detect the failure.
		victim.list.Shutdown()
		var detected time.Duration
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			d.mu.Lock()
			observers := d.seen[victim.name]
			all := true
			var last time.Time
			for _, m := range live {
				when, ok := observers[m.name]
				if !ok {
					all = false
					break
				}
				if when.After(last) {
					last = when
				}
			}
			d.mu.Unlock()
			if all {
				detected = last.Sub(killed)
				break
			}
		}
		times = append(times, detected.Seconds())
		out, _ := json.Marshal(map[string]interface{}{"round": round + 1, "victim": victim.name, "detection_seconds": detected.Seconds()})
		fmt.Println(string(out))
		add()
		waitConverged()
	}
	sort.Float64s(times)
	q := func(p float64) float64 {
		i := int(float64(len(times))*p+0.999999) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(times) {
			i = len(times) - 1
		}
		return times[i]
	}
	summary, _ := json.Marshal(map[string]interface{}{"summary": true, "rounds": len(times), "p50": q(0.5), "p99": q(0.99), "max": times[len(times)-1]})
	fmt.Println(string(summary))
	for _, m := range live {
		m.list.Shutdown()
	}
	os.Exit(0)
}
