package storetest

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func (f *fixture) template(t *testing.T, projectID, name, module, body string) batchsender.Template {
	t.Helper()
	tp, err := f.s.TemplateCreate(f.ctx, batchsender.TemplateCreateParams{ProjectID: projectID, Name: name, Module: module, Template: json.RawMessage(body)})
	if err != nil {
		t.Fatalf("TemplateCreate: %v", err)
	}
	return tp
}

func init() {
	register(
		test{"TemplateVersions", func(t *testing.T, f *fixture) {
			v1 := f.template(t, f.a.ID, "welcome", "email", `{"subject":"Hi {{ name }}"}`)
			if v1.Version != 1 || v1.Name != "welcome" || v1.Module != "email" {
				t.Fatalf("first version = %+v", v1)
			}
			near(t, "CreatedAt", v1.CreatedAt, time.Now())
			v2 := f.template(t, f.a.ID, "welcome", "email", `{"subject":"Hello {{ name }}",  "from":"a@example.com"}`)
			if v2.Version != 2 {
				t.Fatalf("second version = %d", v2.Version)
			}
			latest, err := f.s.TemplateGet(f.ctx, f.a.ID, "welcome", 0)
			if err != nil || latest.Version != 2 || string(latest.Template) != `{"subject":"Hello {{ name }}",  "from":"a@example.com"}` {
				t.Fatalf("latest = %+v, %v", latest, err)
			}
			old, err := f.s.TemplateGet(f.ctx, f.a.ID, "welcome", 1)
			if err != nil || old.Version != 1 || string(old.Template) != `{"subject":"Hi {{ name }}"}` || !old.CreatedAt.Equal(v1.CreatedAt) {
				t.Fatalf("version 1 = %+v, %v", old, err)
			}
			_, err = f.s.TemplateGet(f.ctx, f.a.ID, "welcome", 3)
			wantCode(t, err, batchsender.ENOTFOUND)
			_, err = f.s.TemplateGet(f.ctx, f.a.ID, "nope", 0)
			wantCode(t, err, batchsender.ENOTFOUND)
			// Another module under the same name is refused.
			_, err = f.s.TemplateCreate(f.ctx, batchsender.TemplateCreateParams{ProjectID: f.a.ID, Name: "welcome", Module: "sms", Template: json.RawMessage(`{}`)})
			wantCode(t, err, batchsender.ECONFLICT)
		}},
		test{"TemplatesAreTheProjects", func(t *testing.T, f *fixture) {
			f.template(t, f.b.ID, "welcome", "email", `{"subject":"theirs"}`)
			_, err := f.s.TemplateGet(f.ctx, f.a.ID, "welcome", 0)
			wantCode(t, err, batchsender.ENOTFOUND)
			mine := f.template(t, f.a.ID, "welcome", "webhook", `{"url":"https://example.com"}`)
			if mine.Version != 1 {
				t.Fatalf("project A's first version is %d", mine.Version)
			}
			list, err := f.s.TemplateList(f.ctx, batchsender.TemplateListParams{ProjectID: f.a.ID})
			if err != nil || len(list) != 1 || list[0].Module != "webhook" {
				t.Fatalf("TemplateList = %+v, %v", list, err)
			}
			_, err = f.s.TemplateCreate(f.ctx, batchsender.TemplateCreateParams{ProjectID: "prj_missing", Name: "x", Module: "email", Template: json.RawMessage(`{}`)})
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"TemplateListShowsLatestAndPages", func(t *testing.T, f *fixture) {
			for i := range 12 {
				name := fmt.Sprintf("t%02d", 11-i)
				f.template(t, f.a.ID, name, "email", `{"v":1}`)
				if i%2 == 0 {
					f.template(t, f.a.ID, name, "email", `{"v":2}`)
				}
			}
			var all []batchsender.Template
			cursor := ""
			for {
				page, err := f.s.TemplateList(f.ctx, batchsender.TemplateListParams{ProjectID: f.a.ID, Cursor: cursor, Limit: 5})
				if err != nil {
					t.Fatalf("TemplateList: %v", err)
				}
				if len(page) == 0 {
					break
				}
				if len(page) > 5 {
					t.Fatalf("page of %d", len(page))
				}
				all = append(all, page...)
				cursor = page[len(page)-1].Name
			}
			if len(all) != 12 {
				t.Fatalf("%d templates listed, want 12", len(all))
			}
			for i, tp := range all {
				name := fmt.Sprintf("t%02d", i)
				wantVersion := 1
				if (11-i)%2 == 0 {
					wantVersion = 2
				}
				if tp.Name != name || tp.Version != wantVersion || string(tp.Template) != fmt.Sprintf(`{"v":%d}`, wantVersion) {
					t.Fatalf("template %d = %+v, want %s version %d", i, tp, name, wantVersion)
				}
			}
		}},
	)
}
