package proxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestEveryRejectReasonIsListed: each reason the proxy refuses a request
// for is in RejectReasons, so its metric series exists at 0 from the start
// (a series that first appears at 1 is invisible to rate() and increase()).
func TestEveryRejectReasonIsListed(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	found := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); !ok || sel.Sel.Name != "Rejected" {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				t.Errorf("%s: Rejected with a reason that is not a literal; list its values in RejectReasons and extend this test", fset.Position(call.Pos()))
				return true
			}
			reason, _ := strconv.Unquote(lit.Value)
			found++
			if !slices.Contains(RejectReasons, reason) {
				t.Errorf("%s: reason %q is not in RejectReasons", fset.Position(call.Pos()), reason)
			}
			return true
		})
	}
	if found < len(RejectReasons) {
		t.Fatalf("found %d Rejected calls; want at least one per listed reason (%d)", found, len(RejectReasons))
	}
}
