package edgebox_test

import (
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
	"github.com/edgebox/edgebox/clients/go/supervisor"
)

func TestMutualTLS(t *testing.T) {
	pki, err := enginetest.WritePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	healthTLS, err := edgebox.LoadTLSConfig(pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	engine := enginetest.StartT(t, enginetest.Options{
		Config: map[string]any{"grpc": map[string]any{"tls": map[string]any{
			"cert_file": pki.ServerCertFile, "key_file": pki.ServerKeyFile, "client_ca_file": pki.CAFile}}},
		Supervisor: supervisor.Config{TLS: healthTLS}, // its health checks need the client certificate too
	})
	ctx := testContext(t, 30*time.Second)

	c := dial(t, engine.Addr(), edgebox.WithTLSFiles(pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile))
	h, err := c.HealthCheck(ctx)
	if err != nil || h.GetStatus() != inferpb.HealthStatus_SERVING {
		t.Fatalf("with a client certificate: %v %v", h, err)
	}

	noCert := dial(t, engine.Addr(), edgebox.WithTLSFiles(pki.CAFile, "", ""), edgebox.WithoutRetries())
	if _, err := noCert.HealthCheck(ctx); err == nil {
		t.Fatal("the engine accepted a client without a certificate")
	}
	plain := dial(t, engine.Addr(), edgebox.WithoutRetries())
	if _, err := plain.HealthCheck(ctx); !edgebox.IsUnavailable(err) {
		t.Fatalf("plaintext to a TLS engine: %v", err)
	}
	if _, err := edgebox.Dial(engine.Addr(), edgebox.WithTLSFiles("/no/such/ca.pem", "", "")); err == nil {
		t.Fatal("Dial accepted a missing CA file")
	}
}
