package consistency

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite the Go examples in docs/api.md from the Example functions")

// docExamples maps each docs/api.md section ("## Name") to the Example function its "### Go" block shows.
var docExamples = []struct{ section, file, function string }{
	{"Connecting", "edgebox/example_test.go", "ExampleDial"},
	{"AddCamera", "edgebox/example_test.go", "ExampleClient_AddCamera"},
	{"RemoveCamera", "edgebox/example_test.go", "ExampleClient_RemoveCamera"},
	{"ListCameras", "edgebox/example_test.go", "ExampleClient_ListCameras"},
	{"DeployWorkflow", "edgebox/example_test.go", "ExampleClient_DeployWorkflow"},
	{"UpdateWorkflow", "edgebox/example_test.go", "ExampleClient_UpdateWorkflow"},
	{"DeleteWorkflow", "edgebox/example_test.go", "ExampleClient_DeleteWorkflow"},
	{"ListWorkflows", "edgebox/example_test.go", "ExampleClient_ListWorkflows"},
	{"InferSingleFrame", "edgebox/example_test.go", "ExampleClient_InferSingleFrame"},
	{"InferBatch", "edgebox/example_test.go", "ExampleClient_InferBatch"},
	{"HealthCheck", "edgebox/example_test.go", "ExampleClient_HealthCheck"},
	{"GetMetrics", "edgebox/example_test.go", "ExampleClient_GetMetrics"},
	{"SubscribeResults", "edgebox/example_test.go", "ExampleClient_SubscribeResults"},
	{"StreamInfer", "edgebox/example_test.go", "ExampleClient_StreamInfer"},
	{"RegisterNode", "refmanager/example_test.go", "ExampleServer_RegisterNode"},
	{"Heartbeat", "refmanager/example_test.go", "ExampleServer_Heartbeat"},
	{"ReportMetrics", "refmanager/example_test.go", "ExampleServer_ReportMetrics"},
}

// TestDocsShowTheExamples keeps docs/api.md honest: each section's Go block is the body of an Example
// function, which go test compiles and runs against a real engine. Fix a failure with
// `go test ./internal/consistency -run Docs -update-docs` (only the Go blocks are rewritten).
func TestDocsShowTheExamples(t *testing.T) {
	root, err := enginetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	docPath := filepath.Join(root, "..", "..", "docs", "api.md")
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	for _, ex := range docExamples {
		body, err := exampleBody(filepath.Join(root, ex.file), ex.function)
		if err != nil {
			t.Fatal(err)
		}
		updated, current, err := setGoBlock(text, ex.section, body)
		if err != nil {
			if *updateDocs {
				t.Fatal(err)
			}
			t.Errorf("%v", err)
			continue
		}
		if current != body {
			if *updateDocs {
				text = updated
				continue
			}
			t.Errorf("docs/api.md section %q does not show %s (%s); run: go test ./internal/consistency -run Docs "+
				"-update-docs", ex.section, ex.function, ex.file)
		}
	}
	if *updateDocs && text != string(doc) {
		if err := os.WriteFile(docPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote the Go examples of %s", docPath)
	}
}

// exampleBody returns the statements of a function, de-indented one tab, as gofmt left them.
func exampleBody(path, name string) (string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		return "", err
	}
	for _, decl := range file.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != name {
			continue
		}
		start, end := fset.Position(fn.Body.Lbrace).Offset+1, fset.Position(fn.Body.Rbrace).Offset
		lines := strings.Split(strings.Trim(string(src[start:end]), "\n"), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, "\t")
		}
		return strings.Join(lines, "\n") + "\n", nil
	}
	return "", fmt.Errorf("%s: no function %s", path, name)
}

// setGoBlock finds "## section", then its "### Go" subsection and the first ```go block in it; it returns
// the document with that block's content replaced by body, and the current content.
func setGoBlock(doc, section, body string) (updated, current string, err error) {
	head := "\n## " + section + "\n"
	i := strings.Index(doc, head)
	if i < 0 {
		return "", "", fmt.Errorf("docs/api.md has no section %q", strings.TrimSpace(head))
	}
	i += len(head)
	end := strings.Index(doc[i:], "\n## ")
	if end < 0 {
		end = len(doc) - i
	}
	sec := doc[i : i+end]
	g := strings.Index(sec, "\n### Go\n")
	if g < 0 {
		return "", "", fmt.Errorf("docs/api.md section %q has no \"### Go\" subsection", section)
	}
	open := strings.Index(sec[g:], "```go\n")
	if open < 0 {
		return "", "", fmt.Errorf("docs/api.md section %q: no ```go block under ### Go", section)
	}
	from := i + g + open + len("```go\n")
	to := strings.Index(doc[from:], "```")
	if to < 0 {
		return "", "", fmt.Errorf("docs/api.md section %q: unterminated ```go block", section)
	}
	return doc[:from] + body + doc[from+to:], doc[from : from+to], nil
}

// TestGeneratedStubsAreFresh fails when inferpb/managerpb differ from what proto/*.proto generates.
func TestGeneratedStubsAreFresh(t *testing.T) {
	repo, err := enginetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(repo, ".venv", "bin", "python")); err != nil {
		t.Skip("no .venv (protoc comes from its grpcio-tools); run ./dev setup")
	}
	cmd := exec.Command("bash", filepath.Join(repo, "scripts", "setup-go.sh"), "--check")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/setup-go.sh --check: %v\n%s", err, out.String())
	}
}
