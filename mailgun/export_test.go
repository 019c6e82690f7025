package mailgun

// SetMaxCallBytes changes the form size limit for a test and returns a
// function restoring it.
func SetMaxCallBytes(n int) (restore func()) {
	old := maxCallBytes
	maxCallBytes = n
	return func() { maxCallBytes = old }
}
