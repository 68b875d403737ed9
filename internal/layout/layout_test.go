package layout_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/postern/postern"

// layers lists the module's packages from the bottom up. A package
// imports only packages of lower layers (tests may import anything).
var layers = [][]string{
	{ // foundation: no imports of the module
		"internal/auth", "internal/auth/authtest", "internal/cluster", "internal/connpeek", "internal/version", "internal/store",
		"internal/expose/muxconn", "internal/expose/live", "internal/relay/gcr/wire", "internal/relay/splice", "internal/store/redisstore/redistest",
		"internal/layout", "internal/certs/certstest", "internal/browsertest", "internal/channels/iouring",
	},
	{ // contracts: what engines and parts are handed
		"internal/capability", "internal/store/ordered", "internal/store/storetest", "internal/relay/relaytest",
	},
	{"internal/httpapi", "internal/store/index"},
	{ // engines, and what the node puts in front of every request
		"internal/store/memstore", "internal/store/filestore", "internal/store/redisstore", "internal/ratelimit", "internal/web",
		"internal/certs",
	},
	{"internal/queue", "internal/broker", "internal/relay"},                                             // cores
	{"internal/expose/brickchain", "internal/relay/gcr/client"},                                         // transports
	{"internal/tunnel", "internal/inbox", "internal/channels", "internal/relay/gcr", "internal/expose"}, // capabilities
	{"internal/node"},
	{"internal/servertest", "internal/config", "client"},
	{"internal/cli", "internal/chaos"},
	{"cmd/postern", "bench", "bench/*"},
}

// pkg is what the test reads of one package (its non-test files).
type pkg struct {
	imports map[string]bool // of the module, by path relative to it
	doc     bool
	long    []string // functions over 100 lines
}

// root is the module's directory.
func root(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}

// read parses every package of the module.
func read(t *testing.T) map[string]*pkg {
	t.Helper()
	top := root(t)
	fset := token.NewFileSet()
	pkgs := map[string]*pkg{}
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != top && (name == "testdata" || name == "node_modules" || strings.HasPrefix(name, ".") || name == "clients") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(top, filepath.Dir(p))
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		k := pkgs[rel]
		if k == nil {
			k = &pkg{imports: map[string]bool{}}
			pkgs[rel] = k
		}
		k.doc = k.doc || f.Doc != nil
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if dep, ok := strings.CutPrefix(path, module+"/"); ok {
				k.imports[dep] = true
			}
		}
		if !strings.HasPrefix(rel, "bench") {
			k.long = append(k.long, longFuncs(fset, f, filepath.ToSlash(filepath.Join(rel, name)))...)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func longFuncs(fset *token.FileSet, f *ast.File, file string) []string {
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		var body *ast.BlockStmt
		name := "a function literal"
		switch x := n.(type) {
		case *ast.FuncDecl:
			body, name = x.Body, x.Name.Name
		case *ast.FuncLit:
			body = x.Body
		}
		if body != nil {
			from, to := fset.Position(n.Pos()).Line, fset.Position(body.Rbrace).Line
			if to-from+1 > 100 {
				out = append(out, fmt.Sprintf("%s:%d %s (%d lines)", file, from, name, to-from+1))
			}
		}
		return true
	})
	return out
}

// layerOf returns the layer of package rel, -1 when it has none.
func layerOf(rel string) int {
	for i, l := range layers {
		for _, p := range l {
			if p == rel || strings.HasSuffix(p, "/*") && strings.HasPrefix(rel, strings.TrimSuffix(p, "*")) {
				return i
			}
		}
	}
	return -1
}

// TestImportsGoDownward: every package has a layer, and imports only
// packages of lower layers.
func TestImportsGoDownward(t *testing.T) {
	pkgs := read(t)
	names := make([]string, 0, len(pkgs))
	for rel := range pkgs {
		names = append(names, rel)
	}
	sort.Strings(names)
	for _, rel := range names {
		l := layerOf(rel)
		if l < 0 {
			t.Errorf("%s has no layer: give it one in layout_test.go (and docs/architecture.md)", rel)
			continue
		}
		for dep := range pkgs[rel].imports {
			if dl := layerOf(dep); dl >= l {
				t.Errorf("%s (layer %d) imports %s (layer %d): imports go to lower layers only", rel, l, dep, dl)
			}
		}
	}
}

// TestNoLongFunctions: no function outside tests and bench/ is longer
// than 100 lines.
func TestNoLongFunctions(t *testing.T) {
	for _, k := range read(t) {
		for _, f := range k.long {
			t.Errorf("%s: split it", f)
		}
	}
}

// TestPackagesSayWhatTheyOwn: every package has a doc comment.
func TestPackagesSayWhatTheyOwn(t *testing.T) {
	for rel, k := range read(t) {
		if !k.doc {
			t.Errorf("%s has no package doc comment", rel)
		}
	}
}
