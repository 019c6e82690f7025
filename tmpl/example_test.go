package tmpl_test

import (
	"fmt"

	"github.com/batchsender/batchsender/tmpl"
)

func Example() {
	t, err := tmpl.Parse(`<p>Hi {{ first_name | upcase }}, you owe {{ amount | money: "EUR" }}.</p>`)
	if err != nil {
		panic(err)
	}
	vars, _ := tmpl.DecodeVars([]byte(`{"first_name": "Ann <3", "amount": 1234.5}`))
	out, _ := t.Render(vars, true)
	fmt.Println(out)
	fmt.Println(t.Required())

	_, err = t.Render(map[string]any{"amount": 1}, true)
	name, _ := tmpl.IsMissingVariable(err)
	fmt.Println(err, name)
	// Output:
	// <p>Hi ANN &lt;3, you owe €1,234.50.</p>
	// [amount first_name]
	// missing variable "first_name" first_name
}
