package fleet

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// news is what the channel said lately: "c:<version>" (committed),
// "r:<version>" (released: take over), "f:<version>" (failed: its record
// is in Redis). Every message is a hint, never a fact: it wakes the
// waiters, who ask Redis. Nothing here remembers a newest version, so a
// forged or reordered message cannot make a real one look old.
type news struct {
	mu     sync.Mutex
	wake   chan struct{} // closed and replaced on every message
	events []event       // the last newsKept messages, oldest first
	seq    uint64        // of the newest event
}

// newsKept is how many messages a waiter can catch up on: far more than
// arrive while one waiter is between two looks.
const newsKept = 32

// event is one message.
type event struct {
	seq, version uint64
	kind         byte // 'c', 'r' or 'f'
}

// add records a message and wakes every waiter.
func (n *news) add(kind byte, version uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq++
	n.events = append(n.events[max(0, len(n.events)-newsKept+1):], event{seq: n.seq, kind: kind, version: version})
	close(n.wake)
	n.wake = make(chan struct{})
}

// since returns the events after *seq, moving *seq to the newest, and the
// channel the next event closes, in one look.
func (n *news) since(seq *uint64) ([]event, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []event
	for _, ev := range n.events {
		if ev.seq > *seq {
			out = append(out, ev)
		}
	}
	*seq = n.seq
	return out, n.wake
}

// heard takes one message: a commit goes on to OnNews, however often it
// repeats (the cache knows what it holds, and a repeat after a lost
// adoption is its second chance).
func (t *Tier[V]) heard(kind byte, version uint64) {
	t.news.add(kind, version)
	if kind == 'c' {
		atomic.AddUint64(&t.stats.NewsReceived, 1)
		if t.opts.OnNews != nil {
			t.opts.OnNews(version)
		}
	}
}

// parseMessage reads "<kind>:<version>", false for anything else.
func parseMessage(payload string) (kind byte, version uint64, ok bool) {
	k, v, _ := strings.Cut(payload, ":")
	version, err := strconv.ParseUint(v, 10, 64)
	if err != nil || version == 0 || version >= maxVersion || len(k) != 1 || !strings.Contains("crf", k) {
		return 0, 0, false
	}
	return k[0], version, true
}

// listen delivers news from the channel. Pub/sub keeps nothing, so news
// is lost while the subscription is down; go-redis pings an idle
// subscription (every 3s) and resubscribes after any break, and each
// (re)subscription is followed by one read of the snapshot's version: the
// backstop costs nothing while the channel works.
func (t *Tier[V]) listen(ctx context.Context) {
	for t.subscribed(ctx) {
	}
}

// subscribed delivers news from one subscription until ctx ends (false)
// or a new subscription is asked for (true).
func (t *Tier[V]) subscribed(ctx context.Context) bool {
	ps := t.client.Subscribe(ctx, t.k[keyNews])
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.resubscribe:
			return true
		case m, ok := <-msgs:
			if !ok {
				return false
			}
			// A message is Redis answering: after an outage, sharing
			// resumes now rather than at the breaker's next probe.
			t.breaker.alive()
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					t.poll(ctx)
				}
			case *redis.Message:
				if kind, version, ok := parseMessage(m.Payload); ok {
					t.heard(kind, version)
				}
			}
		}
	}
}

// poll reads the version of the snapshot in Redis: news that may have
// been missed while the subscription was down.
func (t *Tier[V]) poll(ctx context.Context) {
	h, err := t.peek(ctx, "poll", keySnapshot, headerMax)
	if err != nil {
		return
	}
	if line, _, ok := strings.Cut(h, "\n"); ok {
		v, _, _ := strings.Cut(line, " ")
		if version, err := strconv.ParseUint(v, 10, 64); err == nil && version > 0 && version < maxVersion {
			t.heard('c', version)
		}
	}
}

// watchSentinels listens to every sentinel named for the master's moves
// (+switch-master) and renews the news subscription on each. go-redis
// moves its command connections to the new master, but not a
// subscription: that one stays on the old master, which after a manual
// failover stays a master, deaf to the new one's news, until the
// sentinels demote it; the replicas that did not lead would then serve an
// older snapshot than the one that did. One connection per sentinel, so
// the news of a move comes while any one is up.
func (t *Tier[V]) watchSentinels(ctx context.Context, fo *redis.FailoverOptions) {
	var wg sync.WaitGroup
	for _, addr := range fo.SentinelAddrs {
		wg.Go(func() {
			sc := redis.NewSentinelClient(&redis.Options{
				Addr: addr, Username: fo.SentinelUsername, Password: fo.SentinelPassword, TLSConfig: fo.TLSConfig,
				Dialer: fo.Dialer, DialTimeout: fo.DialTimeout, ReadTimeout: fo.ReadTimeout, WriteTimeout: fo.WriteTimeout,
				MaxRetries: -1, DialerRetries: 1, DisableIdentity: true,
			})
			defer sc.Close()
			ps := sc.Subscribe(ctx, "+switch-master")
			defer ps.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case m, ok := <-ps.Channel():
					if !ok {
						return
					}
					// "<master name> <old ip> <old port> <new ip> <new port>"
					if name, to, _ := strings.Cut(m.Payload, " "); name == fo.MasterName {
						t.opts.Log.InfoContext(ctx, "the master moved: renewing the news subscription", "sentinel", addr, "move", to)
						select {
						case t.resubscribe <- struct{}{}:
						default: // one is asked for already
						}
					}
				}
			}
		})
	}
	wg.Wait()
}
