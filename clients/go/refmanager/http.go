package refmanager

import (
	"encoding/json"
	"net/http"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// HTTPHandler serves a read-only JSON view: GET /nodes (a summary of every node) and GET /nodes/{id} (one
// node with its last heartbeat, last metrics sample and callback inventory).
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /nodes", func(w http.ResponseWriter, r *http.Request) {
		nodes := s.Nodes()
		out := make([]nodeView, 0, len(nodes))
		for i := range nodes {
			out = append(out, summary(&nodes[i], false))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /nodes/{id}", func(w http.ResponseWriter, r *http.Request) {
		n, ok := s.Node(r.PathValue("id"))
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no node " + r.PathValue("id")})
			return
		}
		writeJSON(w, http.StatusOK, summary(&n, true))
	})
	return mux
}

type nodeView struct {
	ID              string          `json:"id"`
	Address         string          `json:"address"`
	RegisteredAt    time.Time       `json:"registered_at"`
	Registrations   int             `json:"registrations"`
	Heartbeats      int             `json:"heartbeats"`
	MetricsSamples  int             `json:"metrics_samples"`
	LastHeartbeatAt *time.Time      `json:"last_heartbeat_at,omitempty"`
	Status          string          `json:"status,omitempty"`
	CameraCount     uint32          `json:"camera_count"`
	Registration    json.RawMessage `json:"registration,omitempty"`
	LastHeartbeat   json.RawMessage `json:"last_heartbeat,omitempty"`
	LastMetrics     json.RawMessage `json:"last_metrics,omitempty"`
	Inventory       *inventoryView  `json:"inventory,omitempty"`
}

type inventoryView struct {
	At        time.Time         `json:"at"`
	Error     string            `json:"error,omitempty"`
	Health    json.RawMessage   `json:"health,omitempty"`
	Cameras   []json.RawMessage `json:"cameras"`
	Workflows []json.RawMessage `json:"workflows"`
}

func summary(n *Node, detail bool) nodeView {
	v := nodeView{ID: n.ID, Address: n.Address, RegisteredAt: n.RegisteredAt, Registrations: n.Registrations,
		Heartbeats: len(n.Heartbeats), MetricsSamples: len(n.Metrics)}
	if hb := n.LastHeartbeat(); hb != nil {
		at := hb.ReceivedAt
		v.LastHeartbeatAt, v.Status, v.CameraCount = &at, hb.Request.GetStatus().String(), hb.Request.GetCameraCount()
		if detail {
			v.LastHeartbeat = pj(hb.Request)
		}
	}
	if !detail {
		return v
	}
	v.Registration = pj(n.Registration)
	if len(n.Metrics) > 0 {
		v.LastMetrics = pj(n.Metrics[len(n.Metrics)-1].Request)
	}
	if inv := n.Inventory; inv != nil {
		iv := &inventoryView{At: inv.At, Error: inv.Err, Cameras: []json.RawMessage{}, Workflows: []json.RawMessage{}}
		if inv.Health != nil {
			iv.Health = pj(inv.Health)
		}
		for _, c := range inv.Cameras {
			iv.Cameras = append(iv.Cameras, pj(c))
		}
		for _, w := range inv.Workflows {
			iv.Workflows = append(iv.Workflows, pj(w))
		}
		v.Inventory = iv
	}
	return v
}

func pj(m proto.Message) json.RawMessage {
	if m == nil {
		return nil
	}
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil
	}
	return b
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
