package main

// The standard providers. Each registers itself with the SDK registry from
// init(); adding a provider to the binary is one import line here.
import (
	_ "github.com/batchsender/batchsender/mailgun"  // email.mailgun
	_ "github.com/batchsender/batchsender/postmark" // email.postmark
	_ "github.com/batchsender/batchsender/remote"   // remote.http
	_ "github.com/batchsender/batchsender/resend"   // email.resend
	_ "github.com/batchsender/batchsender/sendgrid" // email.sendgrid
	_ "github.com/batchsender/batchsender/ses"      // email.ses
	_ "github.com/batchsender/batchsender/smtp"     // email.smtp
	_ "github.com/batchsender/batchsender/webhook"  // webhook.http
)
