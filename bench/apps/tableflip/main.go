// relink bench: a Go web server that upgrades itself with cloudflare/tableflip,
// the way the apps relink is built for are written.
//
//	usage: app -c CFGFILE      (key=value lines: port=N, message=TEXT)
//
// SIGHUP: tableflip re-executes os.Args[0] (./app.bin, so the new release
// once relink has switched the link), hands the listening socket over, and
// this process drains its connections and exits: the PID changes.
// SIGTERM or SIGINT (what PM2, supervisord and a stop+start script send):
// stop accepting, drain, exit.
//
// GET / answers {"release": ..., "pid": ..., "message": ...}; GET /healthz "ok".
// Builds offline in GOPATH mode against Debian's golang-github-cloudflare-tableflip-dev.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func readConfig(file string) (port int, message string, err error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "port":
			port, _ = strconv.Atoi(v)
		case "message":
			message = v
		}
	}
	if port <= 0 || port > 65535 {
		return 0, "", fmt.Errorf("%s: port= missing or invalid", file)
	}
	return port, message, sc.Err()
}

func main() {
	cfg := flag.String("c", "app.cfg", "config file")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("tableflip-app %d: ", os.Getpid()))
	port, message, err := readConfig(*cfg)
	if err != nil {
		log.Fatalln(err)
	}
	release := "unknown"
	if exe, err := os.Executable(); err == nil {
		release = filepath.Base(exe)
	}

	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: 10 * time.Second})
	if err != nil {
		log.Fatalln(err)
	}
	defer upg.Stop()

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		upg.Stop()
	}()

	ln, err := upg.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		log.Fatalln("listen:", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"release": release, "pid": os.Getpid(), "message": message})
	})
	server := http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := server.Serve(ln); err != http.ErrServerClosed {
			log.Println("serve:", err)
		}
	}()
	log.Printf("release %s listening on 127.0.0.1:%d", release, port)
	if err := upg.Ready(); err != nil {
		log.Fatalln("ready:", err)
	}
	<-upg.Exit()

	time.AfterFunc(10*time.Second, func() {
		log.Println("drain timed out")
		os.Exit(1)
	})
	server.Shutdown(context.Background())
	log.Println("drained, exiting")
}
