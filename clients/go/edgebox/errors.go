package edgebox

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every engine error.
const ErrorDomain = "edgebox.infer"

// ReasonCircuitOpen is the Reason of the error returned while a node's circuit breaker is open.
const ReasonCircuitOpen = "CIRCUIT_OPEN"

// Error is the one error type a Client returns (wrapped nowhere: use errors.As or the Is* helpers).
//
// Code is the engine's InferErrorCode, read from the google.rpc.ErrorInfo detail; it is OK (0) when the
// failure did not come from the engine's handlers (connection refused, client-side deadline, open circuit).
type Error struct {
	// Code is the engine's machine-readable code, e.g. inferpb.InferErrorCode_CAMERA_NOT_FOUND (1001).
	Code inferpb.InferErrorCode
	// Reason is ErrorInfo.reason (the code's name, e.g. "CAMERA_NOT_FOUND"), or ReasonCircuitOpen, or "".
	Reason string
	// GRPCCode is the gRPC status code, e.g. codes.NotFound.
	GRPCCode codes.Code
	// Message is the status message; engine messages start with "[1001 CAMERA_NOT_FOUND]".
	Message string
	// RetryAfter is the server's google.rpc.RetryInfo hint (RESOURCE_EXHAUSTED), or for an open circuit the
	// time until the next probe; 0 means "no hint: do not retry blindly".
	RetryAfter time.Duration
	// Metadata is ErrorInfo.metadata (it holds "code").
	Metadata map[string]string

	status *status.Status
}

// Error renders "edgebox: NotFound: [1001 CAMERA_NOT_FOUND] camera 'x' is not registered; ...".
func (e *Error) Error() string {
	return fmt.Sprintf("edgebox: %s: %s", e.GRPCCode, e.Message)
}

// GRPCStatus lets status.Code(err) and status.FromError(err) see through an *Error.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	return status.New(e.GRPCCode, e.Message)
}

// Is matches the sentinels of this package (by Code when the sentinel has one, else by gRPC code and
// reason) and context.DeadlineExceeded / context.Canceled by gRPC code.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		if t.Code != inferpb.InferErrorCode_OK {
			return e.Code == t.Code
		}
		return e.GRPCCode == t.GRPCCode && (t.Reason == "" || t.Reason == e.Reason)
	}
	switch target {
	case context.DeadlineExceeded:
		return e.GRPCCode == codes.DeadlineExceeded
	case context.Canceled:
		return e.GRPCCode == codes.Canceled
	}
	return false
}

func sentinel(code inferpb.InferErrorCode, grpcCode codes.Code) *Error {
	return &Error{Code: code, Reason: code.String(), GRPCCode: grpcCode, Message: "[" +
		strconv.Itoa(int(code)) + " " + code.String() + "]"}
}

// Sentinels for errors.Is: errors.Is(err, edgebox.ErrCameraNotFound) compares the engine's code.
var (
	ErrInvalidRequest     = sentinel(inferpb.InferErrorCode_INVALID_REQUEST, codes.InvalidArgument)
	ErrAlreadyExists      = sentinel(inferpb.InferErrorCode_ALREADY_EXISTS, codes.AlreadyExists)
	ErrFailedPrecondition = sentinel(inferpb.InferErrorCode_FAILED_PRECONDITION, codes.FailedPrecondition)
	ErrResourceExhausted  = sentinel(inferpb.InferErrorCode_RESOURCE_EXHAUSTED, codes.ResourceExhausted)
	ErrShuttingDown       = sentinel(inferpb.InferErrorCode_SHUTTING_DOWN, codes.Unavailable)
	ErrCameraNotFound     = sentinel(inferpb.InferErrorCode_CAMERA_NOT_FOUND, codes.NotFound)
	ErrWorkflowNotFound   = sentinel(inferpb.InferErrorCode_WORKFLOW_NOT_FOUND, codes.NotFound)
	ErrPluginLoadFailed   = sentinel(inferpb.InferErrorCode_PLUGIN_LOAD_FAILED, codes.FailedPrecondition)
	ErrBackendInitFailed  = sentinel(inferpb.InferErrorCode_BACKEND_INIT_FAILED, codes.Unavailable)
	ErrInferenceTimeout   = sentinel(inferpb.InferErrorCode_INFERENCE_TIMEOUT, codes.DeadlineExceeded)
	ErrGPUOutOfMemory     = sentinel(inferpb.InferErrorCode_GPU_OUT_OF_MEMORY, codes.ResourceExhausted)
	ErrInternal           = sentinel(inferpb.InferErrorCode_INTERNAL_ERROR, codes.Internal)

	// ErrCircuitOpen is returned without a network call while the node's circuit breaker is open.
	ErrCircuitOpen = &Error{GRPCCode: codes.Unavailable, Reason: ReasonCircuitOpen, Message: "circuit open"}
)

// AsError returns err as an *Error if it is (or wraps) one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// CodeOf returns the engine's InferErrorCode of err, OK (0) if it carries none.
func CodeOf(err error) inferpb.InferErrorCode {
	if e, ok := AsError(err); ok {
		return e.Code
	}
	return inferpb.InferErrorCode_OK
}

func grpcCodeOf(err error) codes.Code {
	if e, ok := AsError(err); ok {
		return e.GRPCCode
	}
	return status.Code(err)
}

// IsNotFound reports a NOT_FOUND error: CAMERA_NOT_FOUND (1001) or WORKFLOW_NOT_FOUND (1002).
func IsNotFound(err error) bool { return err != nil && grpcCodeOf(err) == codes.NotFound }

// IsAlreadyExists reports an ALREADY_EXISTS error (409).
func IsAlreadyExists(err error) bool { return err != nil && grpcCodeOf(err) == codes.AlreadyExists }

// IsInvalidArgument reports an INVALID_ARGUMENT error (INVALID_REQUEST, 400).
func IsInvalidArgument(err error) bool { return err != nil && grpcCodeOf(err) == codes.InvalidArgument }

// IsFailedPrecondition reports a FAILED_PRECONDITION error (412, or PLUGIN_LOAD_FAILED 2001).
func IsFailedPrecondition(err error) bool {
	return err != nil && grpcCodeOf(err) == codes.FailedPrecondition
}

// IsUnavailable reports an UNAVAILABLE error: the node is down, draining, unreachable, or its circuit is open.
func IsUnavailable(err error) bool { return err != nil && grpcCodeOf(err) == codes.Unavailable }

// IsDeadlineExceeded reports a call that ran out of time (its deadline, or the engine's INFERENCE_TIMEOUT).
func IsDeadlineExceeded(err error) bool {
	return err != nil && grpcCodeOf(err) == codes.DeadlineExceeded
}

// IsResourceExhausted reports a RESOURCE_EXHAUSTED error; see Error.RetryAfter for the hint.
func IsResourceExhausted(err error) bool {
	return err != nil && grpcCodeOf(err) == codes.ResourceExhausted
}

var messageCode = regexp.MustCompile(`^\[(\d+) ([A-Z_]+)\]`)

// toError converts any error of a gRPC call into an *Error (nil stays nil).
func toError(err error) error {
	if err == nil {
		return nil
	}
	if e, ok := AsError(err); ok {
		return e
	}
	st, ok := status.FromError(err)
	if !ok {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			st = status.New(codes.DeadlineExceeded, err.Error())
		case errors.Is(err, context.Canceled):
			st = status.New(codes.Canceled, err.Error())
		default:
			st = status.New(codes.Unknown, err.Error())
		}
	}
	e := &Error{GRPCCode: st.Code(), Message: st.Message(), status: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() != ErrorDomain {
				continue
			}
			e.Reason = d.GetReason()
			e.Metadata = d.GetMetadata()
			if n, err := strconv.Atoi(d.GetMetadata()["code"]); err == nil {
				e.Code = inferpb.InferErrorCode(n)
			}
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	if e.Code == inferpb.InferErrorCode_OK {
		// An engine status without details (e.g. relayed by a proxy that dropped trailers): read the message.
		if m := messageCode.FindStringSubmatch(e.Message); m != nil {
			n, _ := strconv.Atoi(m[1])
			e.Code, e.Reason = inferpb.InferErrorCode(n), m[2]
		}
	}
	return e
}
