package main

import (
	"strings"
	"testing"
	"time"
)

func TestReadNodeEnvLimits(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	var c nodeConfig
	if err := c.readNodeEnv(env(map[string]string{envMaxInFlight: " 8 ", envLeaseDuration: "30s"})); err != nil {
		t.Fatal(err)
	}
	if c.MaxInFlight != 8 || c.LeaseDuration != 30*time.Second {
		t.Errorf("MaxInFlight %d, LeaseDuration %v; want 8, 30s", c.MaxInFlight, c.LeaseDuration)
	}
	c = nodeConfig{}
	if err := c.readNodeEnv(env(nil)); err != nil || c.MaxInFlight != 0 {
		t.Errorf("unset: MaxInFlight %d, %v; want 0 (the engine's default), nil", c.MaxInFlight, err)
	}
	for _, bad := range []string{"0", "-3", "many", "1.5", "100001"} {
		err := (&nodeConfig{}).readNodeEnv(env(map[string]string{envMaxInFlight: bad}))
		if err == nil || !strings.Contains(err.Error(), envMaxInFlight) {
			t.Errorf("%s=%q: error %v, want one naming the variable", envMaxInFlight, bad, err)
		}
	}
}
