// Command refmanager runs the reference manager: it accepts edgebox nodes' registrations, heartbeats and
// metrics (proto/manager.proto), calls each node back, and shows what it knows as JSON.
//
//	refmanager -grpc 127.0.0.1:50061 -http 127.0.0.1:8061
//	curl -s 127.0.0.1:8061/nodes
//
// An edgebox node reports to it with {"manager": {"address": "127.0.0.1:50061"}} in its config. It prints
// "REFMANAGER READY grpc=HOST:PORT http=HOST:PORT|-" once listening and stops on SIGINT/SIGTERM.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/refmanager"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "refmanager:", err)
		os.Exit(1)
	}
}

func run() error {
	grpcAddr := flag.String("grpc", "127.0.0.1:50061", "ManagerService listen address")
	httpAddr := flag.String("http", "127.0.0.1:8061", `JSON view listen address ("" = off)`)
	cert := flag.String("tls-cert", "", "server certificate (PEM); enables TLS")
	key := flag.String("tls-key", "", "server key (PEM)")
	clientCA := flag.String("tls-client-ca", "", "require client certificates from this CA (mTLS)")
	nodeCA := flag.String("node-ca", "", "CA of the nodes' gRPC servers, for calling them back over TLS")
	nodeCert := flag.String("node-cert", "", "client certificate for calling nodes back (mTLS)")
	nodeKey := flag.String("node-key", "", "client key for calling nodes back")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	var poolOpts []edgebox.Option
	if *nodeCA != "" || *nodeCert != "" {
		poolOpts = append(poolOpts, edgebox.WithTLSFiles(*nodeCA, *nodeCert, *nodeKey))
	}
	pool := edgebox.NewPool(poolOpts...)
	defer pool.Close()
	mgr := refmanager.New(refmanager.Options{Pool: pool, Logger: log})

	var serverOpts []grpc.ServerOption
	if *cert != "" {
		cfg, err := serverTLS(*cert, *key, *clientCA)
		if err != nil {
			return err
		}
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- mgr.Serve(lis, serverOpts...) }()

	httpShown := "-"
	var web *http.Server
	if *httpAddr != "" {
		hl, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		web = &http.Server{Handler: mgr.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := web.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
		httpShown = hl.Addr().String()
	}
	fmt.Printf("REFMANAGER READY grpc=%s http=%s\n", lis.Addr(), httpShown)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case err = <-errs:
	}
	if web != nil {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = web.Shutdown(shutdown)
	}
	mgr.Stop()
	return err
}

func serverTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
