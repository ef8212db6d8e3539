// Test helper for tests/probe.rs: a long-running JSSE TLS server backed by a
// PKCS#12 keystore, as a Java workload that mounts the operator's Secret would be.
//
// Usage (single-file source launch, inside the test network namespace):
//   java tests/java/TlsEndpoint.java <keystore.p12> <password-file> <bind-ip> <port> <ready-file>
//
// Loads the keystore as Java does (KeyStore "PKCS12", KeyManagerFactory "PKIX"),
// listens on <bind-ip>:<port>, writes "ready" to <ready-file>, and then answers
// every connection with a TLS handshake and one line, until killed.

import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;

public class TlsEndpoint {
    public static void main(String[] args) throws Exception {
        char[] password = Files.readString(Path.of(args[1])).strip().toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(Path.of(args[0]))) {
            ks.load(in, password);
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
        kmf.init(ks, password);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), null, null);
        SSLServerSocket server = (SSLServerSocket) ctx.getServerSocketFactory()
            .createServerSocket(Integer.parseInt(args[3]), 50, InetAddress.getByName(args[2]));
        Files.writeString(Path.of(args[4]), "ready");
        while (true) {
            try (SSLSocket s = (SSLSocket) server.accept()) {
                s.setSoTimeout(10_000);
                s.startHandshake();
                OutputStream out = s.getOutputStream();
                out.write("hello from java\n".getBytes(StandardCharsets.UTF_8));
                out.flush();
            } catch (Exception e) {
                System.err.println("connection failed: " + e);
            }
        }
    }
}
