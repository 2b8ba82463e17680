package edgebox

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"

	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// ResultStream receives the results of SubscribeResults. Recv returns io.EOF when the engine ends the stream
// (it does so when it shuts down) and an *Error otherwise. Close it when done.
type ResultStream struct {
	stream grpc.ServerStreamingClient[inferpb.InferResult]
	cancel context.CancelFunc
}

// Recv blocks for the next result.
func (s *ResultStream) Recv() (*inferpb.InferResult, error) {
	r, err := s.stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, toError(err)
	}
	return r, nil
}

// Close ends the subscription.
func (s *ResultStream) Close() { s.cancel() }

// SubscribeResults streams camera results matching req until ctx ends or Close. Streams have no call
// timeout; the circuit breaker still refuses to open one to a node it considers down. Never retried: after a
// failure subscribe again (results produced meanwhile are not replayed).
func (c *Client) SubscribeResults(ctx context.Context, req *inferpb.SubscribeRequest) (*ResultStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	var stream grpc.ServerStreamingClient[inferpb.InferResult]
	err := c.attempt(ctx, func(ctx context.Context) (err error) {
		stream, err = c.raw.SubscribeResults(ctx, req)
		return err
	})
	if err != nil {
		cancel()
		return nil, err
	}
	return &ResultStream{stream: stream, cancel: cancel}, nil
}

// InferStream is the client side of StreamInfer: Send frames, Recv one result per frame in the same order.
// Send and Recv may run in different goroutines. Close it when done.
type InferStream struct {
	stream grpc.BidiStreamingClient[inferpb.StreamFrame, inferpb.InferResult]
	cancel context.CancelFunc
}

// Send pushes one frame. An error means the stream is broken; Recv returns the reason.
func (s *InferStream) Send(f *inferpb.StreamFrame) error {
	if err := s.stream.Send(f); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return toError(err)
	}
	return nil
}

// CloseSend says no more frames will come; the results of those sent still arrive, then Recv gives io.EOF.
func (s *InferStream) CloseSend() error { return s.stream.CloseSend() }

// Recv blocks for the next result. A frame that failed yields a result with ErrorCode set, not an error.
func (s *InferStream) Recv() (*inferpb.InferResult, error) {
	r, err := s.stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, toError(err)
	}
	return r, nil
}

// Close abandons the stream.
func (s *InferStream) Close() { s.cancel() }

// StreamInfer opens a bidirectional inference stream until ctx ends or Close. Never retried.
func (c *Client) StreamInfer(ctx context.Context) (*InferStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	var stream grpc.BidiStreamingClient[inferpb.StreamFrame, inferpb.InferResult]
	err := c.attempt(ctx, func(ctx context.Context) (err error) {
		stream, err = c.raw.StreamInfer(ctx)
		return err
	})
	if err != nil {
		cancel()
		return nil, err
	}
	return &InferStream{stream: stream, cancel: cancel}, nil
}
