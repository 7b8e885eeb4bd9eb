// Command pion-client drives turnkey with pion/turn's client (github.com/pion/turn/v2, the TURN
// client under pion/webrtc), as a Go WebRTC application uses a TURN server: Allocate, a
// permission and a channel installed by the first write to a peer, ChannelData both ways, then a
// hold during which pion's own timers run (allocation refresh every lifetime/2, permission
// refresh every 120 s with CreatePermission to port 0, channel refresh on the first write after
// 5 minutes), data both ways after the hold, and release (Refresh with lifetime 0, proved by a
// second Allocate on the same 5-tuple, which a live allocation would refuse with 437).
//
// Built offline in GOPATH mode from Debian's golang-github-pion-turn.v2-dev (see
// tests/tests/pion_turn.rs). Prints one JSON object; exits 1 if a step failed.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v2"
)

// logTap keeps pion's log lines (debug level) and copies them to stderr.
type logTap struct {
	mu    sync.Mutex
	lines []string
}

func (t *logTap) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		t.lines = append(t.lines, l)
	}
	return os.Stderr.Write(p)
}

func (t *logTap) count(s string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, l := range t.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

type result struct {
	Transport         string   `json:"transport"`
	RelayedAddr       string   `json:"relayed_addr"`
	EarlyToPeer       int      `json:"early_to_peer"`
	EarlyToClient     int      `json:"early_to_client"`
	HeldSecs          float64  `json:"held_secs"`
	LateToClient      bool     `json:"late_to_client"`
	LateToPeer        int      `json:"late_to_peer"`
	AllocRefreshes    int      `json:"alloc_refreshes"`
	PermRefreshes     int      `json:"perm_refreshes"`
	PermRefreshFails  int      `json:"perm_refresh_failures"`
	ChannelBinds      int      `json:"channel_binds"`
	ChannelBindFails  int      `json:"channel_bind_failures"`
	AllocRefreshFails int      `json:"alloc_refresh_failures"`
	Released          bool     `json:"released"`
	Errors            []string `json:"errors"`
}

func main() {
	server := flag.String("server", "", "TURN server host:port")
	transport := flag.String("transport", "udp", "udp, tcp or tls")
	caFile := flag.String("ca", "", "PEM file of the CA to trust (tls)")
	serverName := flag.String("server-name", "localhost", "TLS server name (tls)")
	user := flag.String("user", "", "TURN username")
	pass := flag.String("password", "", "TURN password")
	hold := flag.Duration("hold", 305*time.Second, "how long after the first exchange to test again")
	flag.Parse()

	res := result{Transport: *transport, Errors: []string{}}
	fail := func(format string, a ...interface{}) {
		res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
	}
	defer func() {
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
		if len(res.Errors) > 0 {
			os.Exit(1)
		}
	}()

	conn, err := dial(*transport, *server, *caFile, *serverName)
	if err != nil {
		fail("dial: %v", err)
		return
	}
	tap := &logTap{}
	logs := logging.NewDefaultLoggerFactory()
	logs.Writer = tap
	logs.DefaultLogLevel = logging.LogLevelDebug
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: *server,
		TURNServerAddr: *server,
		Conn:           conn,
		Username:       *user,
		Password:       *pass,
		LoggerFactory:  logs,
	})
	if err != nil {
		fail("client: %v", err)
		return
	}
	defer client.Close()
	if err = client.Listen(); err != nil {
		fail("listen: %v", err)
		return
	}
	relay, err := client.Allocate()
	if err != nil {
		fail("allocate: %v", err)
		return
	}
	res.RelayedAddr = relay.LocalAddr().String()

	peer, err := listenPeer()
	if err != nil {
		fail("peer: %v", err)
		return
	}
	defer peer.Close()
	toPeer := collect(peer)
	toClient := collect(relay)
	peerAddr := peer.LocalAddr()

	// The first write installs the permission (CreatePermission with the peer's port) and starts
	// the ChannelBind; later writes go as ChannelData once the channel is bound.
	start := time.Now()
	res.EarlyToPeer, res.EarlyToClient = exchange(relay, peer, peerAddr, toPeer, toClient, "early", 10)

	time.Sleep(time.Until(start.Add(*hold)))
	res.HeldSecs = time.Since(start).Seconds()
	// The peer speaks first: only a permission that pion's refreshes kept alive lets it through.
	if _, err = peer.WriteTo([]byte("late-p2c"), relay.LocalAddr()); err != nil {
		fail("peer write: %v", err)
	}
	res.LateToClient = waitFor(toClient, "late-p2c", 3*time.Second)
	// The client's next write is the first after 5 minutes: pion refreshes the channel.
	res.LateToPeer, _ = exchange(relay, peer, peerAddr, toPeer, toClient, "late", 10)

	res.AllocRefreshes = tap.count("updated lifetime:")
	res.AllocRefreshFails = tap.count("refresh allocation failed")
	res.PermRefreshes = tap.count("refresh permissions successful")
	res.PermRefreshFails = tap.count("fail to refresh permissions")
	res.ChannelBinds = tap.count("channel binding successful")
	res.ChannelBindFails = tap.count("bind() for refresh failed") + tap.count("bind() failed")

	// Release: Refresh with LIFETIME 0. A second Allocate on the same 5-tuple succeeds only if
	// the first allocation is gone (else 437).
	if err = relay.Close(); err != nil {
		fail("release: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	again, err := client.Allocate()
	if err != nil {
		fail("allocate after release: %v", err)
	} else {
		res.Released = true
		_ = again.Close()
		time.Sleep(200 * time.Millisecond)
	}
}

// listenPeer binds the UDP peer on loopback, on a port no local TCP listener holds: the relay
// under test refuses its own service ports as peers whatever the protocol (security.md), so a
// peer that drew the number of the relay's TCP or metrics listener would be refused by chance.
func listenPeer() (net.PacketConn, error) {
	var held []net.PacketConn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < 64; i++ {
		udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		probe, err := net.Listen("tcp4", udp.LocalAddr().String())
		if err == nil {
			probe.Close()
			return udp, nil
		}
		held = append(held, udp)
	}
	return nil, fmt.Errorf("no UDP port without a TCP listener on the same number")
}

func dial(transport, server, caFile, serverName string) (net.PacketConn, error) {
	switch transport {
	case "udp":
		return net.ListenPacket("udp4", "127.0.0.1:0")
	case "tcp":
		c, err := net.Dial("tcp", server)
		if err != nil {
			return nil, err
		}
		return turn.NewSTUNConn(c), nil
	case "tls":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		c, err := tls.Dial("tcp", server, &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})
		if err != nil {
			return nil, err
		}
		return turn.NewSTUNConn(c), nil
	}
	return nil, fmt.Errorf("unknown transport %q", transport)
}

// collect reads datagrams from c into a channel until c is closed.
func collect(c net.PacketConn) chan []byte {
	ch := make(chan []byte, 256)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- append([]byte(nil), buf[:n]...)
		}
	}()
	return ch
}

// waitFor waits up to d for want on ch, skipping other payloads.
func waitFor(ch chan []byte, want string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case got, ok := <-ch:
			if !ok {
				return false
			}
			if bytes.Equal(got, []byte(want)) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// exchange sends n numbered messages each way (client to peer, then peer back to the relayed
// address), 50 ms apart; returns how many arrived each way.
func exchange(relay, peer net.PacketConn, peerAddr net.Addr, toPeer, toClient chan []byte, tag string, n int) (int, int) {
	up, down := 0, 0
	for i := 0; i < n; i++ {
		msg := fmt.Sprintf("%s-c2p-%d", tag, i)
		if _, err := relay.WriteTo([]byte(msg), peerAddr); err == nil && waitFor(toPeer, msg, 2*time.Second) {
			up++
		}
		back := fmt.Sprintf("%s-p2c-%d", tag, i)
		if _, err := peer.WriteTo([]byte(back), relay.LocalAddr()); err == nil && waitFor(toClient, back, 2*time.Second) {
			down++
		}
		time.Sleep(50 * time.Millisecond)
	}
	return up, down
}
