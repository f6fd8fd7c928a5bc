// A plain Go web server with no graceful-restart code, for
// test/servers.test.ts: it takes its listening socket from LISTEN_FDS (the
// systemd protocol: fd 3, when LISTEN_PID is its own PID) with
// net.FileListener, else binds port= itself. On SIGTERM it stops accepting,
// finishes its requests (http.Server.Shutdown) and exits, as any server does.
//
//	usage: app -c CFGFILE      (key=value lines: port=N)
//
// GET / answers {"release": <executable's file name>, "pid": N, "fds": N}; GET /healthz "ok".
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func port(file string) string {
	f, err := os.Open(file)
	if err != nil {
		log.Fatalln(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && k == "port" {
			return v
		}
	}
	log.Fatalf("%s: no port=", file)
	return ""
}

func main() {
	cfg := flag.String("c", "app.cfg", "config file")
	flag.Parse()
	release := "unknown"
	if exe, err := os.Executable(); err == nil {
		release = filepath.Base(exe)
	}
	var ln net.Listener
	fds := 0
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		fds, _ = strconv.Atoi(os.Getenv("LISTEN_FDS"))
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}
	var err error
	if fds > 0 {
		f := os.NewFile(3, "listen")
		ln, err = net.FileListener(f)
		f.Close()
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:"+port(*cfg))
	}
	if err != nil {
		log.Fatalln(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"release": release, "pid": os.Getpid(), "fds": fds})
	})
	server := &http.Server{Handler: mux}
	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		server.Shutdown(context.Background())
		close(done)
	}()
	if err := server.Serve(ln); err != http.ErrServerClosed {
		log.Fatalln(err)
	}
	<-done
}
