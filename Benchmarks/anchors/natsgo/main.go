// natsgo-load: a load generator on nats.go (Debian's golang-github-nats-io-go-nats-dev), so that Stork and
// nats-server are measured by a client neither of them wrote. Prints one JSON line per run.
//
//	pubsub: a subscriber on -sub, a publisher on -pub sends -n messages of -size bytes as fast as it can; reports
//	        what arrived, how fast, and any error (slow consumer, disconnect).
//	reqrep: a responder on -sub, a requester on -pub sends -n requests one after the other; reports p50/p99.
//	jspub:  creates file stream -stream (subject <stream>.x) unless it exists, then publishes -n messages with
//	        JetStream async publish (-pending acks in flight, nats.go's stall wait of 200 ms); reports the rate and
//	        the publish → ack latency p50/p99/max, and every error (a stalled publisher is one); -rate paces it.
//	jsreplay: a durable pull consumer on -stream starting at -start fetches and acks -n messages in batches of
//	        -batch; reports the rate.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

type result struct {
	Mode     string   `json:"mode"`
	Size     int      `json:"size"`
	Sent     int      `json:"sent"`
	Received int64    `json:"received"`
	Seconds  float64  `json:"seconds"`
	Rate     float64  `json:"rate"`
	P50us    float64  `json:"p50_us,omitempty"`
	P99us    float64  `json:"p99_us,omitempty"`
	MaxUs    float64  `json:"max_us,omitempty"`
	Errors   []string `json:"errors"`
}

type errorLog struct {
	mu     sync.Mutex
	errors []string
}

func (l *errorLog) add(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errors) < 20 {
		l.errors = append(l.errors, text)
	}
}

func (l *errorLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string{}, l.errors...)
}

func connect(url, name string, log *errorLog, ready time.Duration) *nats.Conn {
	// A server that was just started may not listen yet: try again until `ready` has passed.
	deadline := time.Now().Add(ready)
	for {
		nc, err := connectOnce(url, name, log)
		if err == nil {
			return nc
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "connect %s: %v\n", url, err)
			os.Exit(2)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func connectOnce(url, name string, log *errorLog) (*nats.Conn, error) {
	return nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.add(name + ": " + err.Error()) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.add(name + " disconnected: " + err.Error())
			}
		}),
	)
}

func main() {
	mode := flag.String("mode", "pubsub", "pubsub or reqrep")
	pubURL := flag.String("pub", "nats://127.0.0.1:4222", "the publisher's (requester's) server")
	subURL := flag.String("sub", "nats://127.0.0.1:4222", "the subscriber's (responder's) server")
	count := flag.Int("n", 1000000, "messages (requests)")
	size := flag.Int("size", 16, "payload bytes")
	idle := flag.Duration("idle", 10*time.Second, "pubsub: give up when nothing arrives for this long")
	ready := flag.Duration("ready", 60*time.Second, "give up when the subscription does not reach the publisher's server within this long")
	stream := flag.String("stream", "LOAD", "jspub/jsreplay: the stream")
	pending := flag.Int("pending", 4096, "jspub: async publishes in flight")
	rate := flag.Float64("rate", 0, "jspub: publishes per second, paced (0: as fast as acks allow)")
	start := flag.Uint64("start", 1, "jsreplay: the first stream sequence")
	batch := flag.Int("batch", 256, "jsreplay: messages per fetch")
	flag.Parse()

	log := &errorLog{}
	res := result{Mode: *mode, Size: *size, Sent: *count}
	payload := make([]byte, *size)
	subject := fmt.Sprintf("natsgo.%d", time.Now().UnixNano())
	if *mode == "jspub" || *mode == "jsreplay" {
		subject = *stream + ".x"
	}
	_ = subject

	sub := connect(*subURL, "natsgo-sub", log, *ready)
	pub := connect(*pubURL, "natsgo-pub", log, *ready)
	defer sub.Close()
	defer pub.Close()

	switch *mode {
	case "pubsub":
		var received int64
		done := make(chan struct{})
		s, err := sub.Subscribe(subject, func(_ *nats.Msg) {
			if atomic.AddInt64(&received, 1) == int64(*count) {
				close(done)
			}
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		// Client-side limits off: what is measured is the server.
		s.SetPendingLimits(-1, -1)
		sub.Flush()
		// The subscription must be known where the publisher is (another server of a cluster): wait for one probe.
		probe := subject + ".probe"
		got := make(chan struct{}, 1)
		ps, _ := sub.Subscribe(probe, func(_ *nats.Msg) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
		sub.Flush()
		deadline := time.Now().Add(*ready)
		for known := false; !known; {
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "the subscription did not reach the publisher's server within %v\n", *ready)
				os.Exit(3)
			}
			pub.Publish(probe, nil)
			pub.Flush()
			select {
			case <-got:
				known = true
			case <-time.After(50 * time.Millisecond):
			}
		}
		ps.Unsubscribe()
		start := time.Now()
		for i := 0; i < *count; i++ {
			if err := pub.Publish(subject, payload); err != nil {
				log.add("publish: " + err.Error())
				break
			}
		}
		pub.Flush()
		last := int64(-1)
		for waiting := true; waiting; {
			select {
			case <-done:
				waiting = false
			case <-time.After(*idle):
				now := atomic.LoadInt64(&received)
				if now == last {
					waiting = false
				}
				last = now
			}
		}
		res.Seconds = time.Since(start).Seconds()
		res.Received = atomic.LoadInt64(&received)
		res.Rate = float64(res.Received) / res.Seconds
	case "reqrep":
		sub.Subscribe(subject, func(m *nats.Msg) { m.Respond(payload) })
		sub.Flush()
		deadline := time.Now().Add(*ready)
		for {
			if _, err := pub.Request(subject, payload, time.Second); err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "no reply within %v\n", *ready)
				os.Exit(3)
			}
		}
		latencies := make([]float64, 0, *count)
		start := time.Now()
		for i := 0; i < *count; i++ {
			t := time.Now()
			if _, err := pub.Request(subject, payload, 5*time.Second); err != nil {
				log.add("request: " + err.Error())
				continue
			}
			latencies = append(latencies, float64(time.Since(t).Microseconds()))
		}
		res.Seconds = time.Since(start).Seconds()
		res.Received = int64(len(latencies))
		res.Rate = float64(res.Received) / res.Seconds
		sort.Float64s(latencies)
		if len(latencies) > 0 {
			res.P50us = latencies[len(latencies)/2]
			res.P99us = latencies[(len(latencies)*99)/100]
		}
	case "jspub":
		jsPublish(pub, *stream, *count, payload, *pending, *rate, &res, log)
	case "jsreplay":
		jsReplay(sub, *stream, *count, *start, *batch, &res, log)
	default:
		fmt.Fprintln(os.Stderr, "unknown -mode", *mode)
		os.Exit(2)
	}
	res.Errors = log.list()
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

// jsPublish stores `count` messages with async publishes, at most `pending` unacknowledged, timing each ack.
func jsPublish(nc *nats.Conn, stream string, count int, payload []byte, pending int, rate float64, res *result, log *errorLog) {
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(pending), nats.PublishAsyncErrHandler(func(_ nats.JetStream, _ *nats.Msg, err error) {
		log.add("publish: " + err.Error())
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, err := js.StreamInfo(stream); err != nil {
		if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{stream + ".>"}, Storage: nats.FileStorage}); err != nil {
			fmt.Fprintln(os.Stderr, "add stream:", err)
			os.Exit(2)
		}
	}
	subject := stream + ".x"
	type sent struct {
		future nats.PubAckFuture
		at     time.Time
	}
	queue := make(chan sent, pending*2)
	latencies := make([]uint32, 0, count)
	var acked int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for item := range queue {
			select {
			case <-item.future.Ok():
				latencies = append(latencies, uint32(time.Since(item.at).Microseconds()))
				acked++
			case err := <-item.future.Err():
				log.add("ack: " + err.Error())
			case <-time.After(30 * time.Second):
				log.add("ack: none within 30 s")
			}
		}
	}()
	begin := time.Now()
	for i := 0; i < count; i++ {
		if rate > 0 {
			// Paced: message i is due at i / rate seconds; sleep in steps of at least 200 µs.
			if wait := time.Duration(float64(i)/rate*float64(time.Second)) - time.Since(begin); wait > 200*time.Microsecond {
				time.Sleep(wait)
			}
		}
		future, err := js.PublishAsync(subject, payload)
		if err != nil {
			log.add(fmt.Sprintf("publish %d: %v", i, err))
			break
		}
		queue <- sent{future, time.Now()}
	}
	close(queue)
	<-done
	res.Seconds = time.Since(begin).Seconds()
	res.Received = acked
	res.Rate = float64(acked) / res.Seconds
	if len(latencies) > 0 {
		sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
		res.P50us = float64(latencies[len(latencies)/2])
		res.P99us = float64(latencies[(len(latencies)*99)/100])
		res.MaxUs = float64(latencies[len(latencies)-1])
	}
}

// jsReplay reads `count` messages from sequence `start` with a pull consumer, acking each.
func jsReplay(nc *nats.Conn, stream string, count int, start uint64, batch int, res *result, log *errorLog) {
	js, err := nc.JetStream()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	durable := fmt.Sprintf("replay%d", time.Now().UnixNano())
	sub, err := js.PullSubscribe(stream+".>", durable, nats.BindStream(stream), nats.StartSequence(start), nats.AckExplicit())
	if err != nil {
		fmt.Fprintln(os.Stderr, "pull subscribe:", err)
		os.Exit(2)
	}
	defer js.DeleteConsumer(stream, durable)
	var got int64
	begin := time.Now()
	for got < int64(count) {
		want := batch
		if left := int64(count) - got; left < int64(want) {
			want = int(left)
		}
		msgs, err := sub.Fetch(want, nats.MaxWait(10*time.Second))
		if err != nil {
			log.add("fetch: " + err.Error())
			break
		}
		for _, m := range msgs {
			m.Ack()
			got++
		}
	}
	nc.Flush()
	res.Seconds = time.Since(begin).Seconds()
	res.Received = got
	res.Rate = float64(got) / res.Seconds
}
