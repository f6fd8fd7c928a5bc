# A Rack app for the unicorn and puma rows of test/servers.test.ts: it says
# which release started it (ENV['RELEASE'], set by the release's server
# config or wrapper) and its PID.
require 'json'

run lambda { |env|
  body = env['PATH_INFO'] == '/healthz' ? "ok\n" : JSON.generate(release: ENV['RELEASE'], pid: Process.pid)
  [200, { 'content-type' => 'application/json', 'content-length' => body.bytesize.to_s }, [body]]
}
