// A Go web server that restarts itself with facebookgo/grace (gracehttp),
// for test/servers.test.ts: SIGUSR2 starts os.Args[0] again (./app.bin, the
// new release once relink has switched the link) with the listening socket,
// and the successor sends its parent SIGTERM once it serves; SIGTERM drains
// and exits. SIGHUP is not handled: it kills the process.
//
//	usage: app -c CFGFILE      (key=value lines: port=N)
//
// GET / answers {"release": <executable's file name>, "pid": N}; GET /healthz "ok".
// Builds offline in GOPATH mode against Debian's golang-github-facebookgo-grace-dev.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/facebookgo/grace/gracehttp"
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
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"release": release, "pid": os.Getpid()})
	})
	if err := gracehttp.Serve(&http.Server{Addr: "127.0.0.1:" + port(*cfg), Handler: mux}); err != nil {
		log.Fatalln(err)
	}
}
