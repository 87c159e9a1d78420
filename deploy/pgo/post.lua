-- wrk script for PGO training: form posts with a small body.
wrk.method = "POST"
wrk.body = "name=drawbridge&comment=" .. string.rep("x", 200)
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
