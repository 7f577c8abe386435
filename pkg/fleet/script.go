package fleet

// The mechanism every script of the protocol is declared with (the
// scripts themselves are in scripts.go): keys and arguments bound by name,
// constants filled in from Go, and the ACL check a script makes before it
// changes anything.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
)

// A need is a command a script runs, and the keys it runs it on: what an
// ACL must allow.
type need struct {
	cmd  string
	keys []key
}

func needs(cmd string, keys ...key) need { return need{cmd, keys} }

// script is one Lua script of the protocol.
type script struct {
	name  string
	keys  []key
	args  []string
	needs []need
	src   string // before {{ALL_NEEDS}} is filled in
	lua   *redis.Script
}

// aclCheck is what a script asks the ACL before it runs: nothing (a
// script that only reads cannot fail half way), its own needs, or every
// command of the protocol.
type aclCheck int

const (
	checkNone aclCheck = iota
	checkOwn
	checkAll
)

// every script, for allNeeds and the tests.
var scripts []*script

// newScript declares a script: its keys and arguments, by name, bound to
// Lua locals of those names; the commands it runs (needs); and what it
// asks the ACL before it does anything (begin checks every command of the
// protocol, so a permission missing anywhere is found before a lock is
// taken). The Lua's {{CONSTANTS}} are filled in from Go.
func newScript(name string, keys []key, args []string, ns []need, check aclCheck, body string) *script {
	s := &script{name: name, keys: keys, args: args, needs: ns}
	checkAll := check == checkAll
	scripts = append(scripts, s)
	var b strings.Builder
	for i, k := range keys {
		fmt.Fprintf(&b, "local %s = KEYS[%d]\n", keyNames[k], i+1)
	}
	for i, a := range args {
		fmt.Fprintf(&b, "local %s = ARGV[%d]\n", a, i+1)
	}
	if check != checkNone {
		b.WriteString("if redis.acl_check_cmd then\n  for _, c in ipairs(")
		if checkAll {
			b.WriteString("{{ALL_NEEDS}}")
		} else {
			b.WriteString(luaNeeds(ns))
		}
		b.WriteString(`) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('NOPERM the fleet needs ' .. string.upper(c[1]) .. ' on ' .. c[2] .. ' (ACL: +' .. c[1] .. ' and a key and channel pattern for it)')
    end
  end
end
`)
	}
	b.WriteString(body)
	s.src = constants.Replace(b.String())
	if strings.Contains(strings.ReplaceAll(s.src, "{{ALL_NEEDS}}", ""), "{{") {
		panic("fleet: script " + name + " uses a constant Go does not fill in")
	}
	return s
}

// init loads the scripts once all are declared: begin checks the needs of
// every script, so it is complete only then.
func init() {
	all := luaNeeds(allNeeds())
	for _, s := range scripts {
		s.lua = redis.NewScript(strings.Replace(s.src, "{{ALL_NEEDS}}", all, 1))
	}
}

// plainNeeds are the commands the protocol runs outside its scripts.
var plainNeeds = []need{needs("subscribe", keyNews), needs("getrange", keySnapshot)}

// allNeeds is every command the protocol runs, on every key: the scripts'
// own, and the subscription the news arrives by.
func allNeeds() []need {
	out := slices.Clone(plainNeeds)
	seen := map[string]bool{}
	for _, s := range scripts {
		for _, n := range s.needs {
			id := fmt.Sprint(n)
			if !seen[id] {
				seen[id] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// luaNeeds is ns as the Lua table redis.acl_check_cmd's arguments come
// from: {command, key..., and a value for the commands that need one}.
func luaNeeds(ns []need) string {
	var b strings.Builder
	b.WriteString("{ ") // not "{{": that is a placeholder
	for _, n := range ns {
		fmt.Fprintf(&b, "{'%s'", n.cmd)
		for _, k := range n.keys {
			fmt.Fprintf(&b, ", %s", keyNames[k])
		}
		switch n.cmd {
		case "set", "publish", "pexpire":
			b.WriteString(", '1'")
		case "getrange":
			b.WriteString(", '0', '1'")
		}
		b.WriteString("}, ")
	}
	b.WriteString("}")
	return b.String()
}

// of resolves a script's keys in the namespace, in the order declared.
func (k *keys) of(s *script) []string {
	out := make([]string, len(s.keys))
	for i, key := range s.keys {
		out[i] = k[key]
	}
	return out
}

// keys are the fleet's keys in one namespace.
type keys [numKeys]string

func newKeys(namespace, channel string) *keys {
	var k keys
	for i := range numKeys {
		k[i] = namespace + keySuffix[i]
	}
	k[keyNews] = channel
	return &k
}
